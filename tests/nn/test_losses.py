import torch
import torch.nn.functional as F

import trainlab as tl


def test_cross_entropy_matches_torch():
    logits = torch.randn(16, 5, dtype=torch.float64)
    target = torch.randint(0, 5, (16,))
    torch.testing.assert_close(tl.nn.cross_entropy(logits, target), F.cross_entropy(logits, target))


def test_mse_onehot_is_squared_distance_of_softmax_to_onehot():
    logits = torch.tensor([[3.0, 1.0, -3.0]])
    # the lecture's example: softmax(3, 1, -3) ≈ (0.88, 0.12, 0.00)
    torch.testing.assert_close(tl.nn.softmax(logits), torch.tensor([[0.8789, 0.1189, 0.0022]]), atol=1e-4, rtol=0)
    p = torch.softmax(logits, -1)[0]
    expected = (p[0] - 1) ** 2 + p[1] ** 2 + p[2] ** 2
    torch.testing.assert_close(tl.nn.mse_onehot(logits, torch.tensor([0])), expected)
