import os
import sys

# `python -m trainlab` puts the current directory first on the import path, where a local tqdm.py or
# sklearn.py would stand in for trainlab's own dependencies; the `trainlab` command has no such entry,
# and `trainlab diagnose --model` puts the directory back (behind them) for the user's module alone
if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from trainlab.cli import main  # noqa: E402

sys.exit(main())
