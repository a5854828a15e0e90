import pytest


@pytest.fixture(scope="session")
def digits():
    import trainlab as tl

    return tl.data.load_digits()
