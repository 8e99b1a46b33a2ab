"""How much of the toy base's prompt gap training on its decoder side recovers (`stable_sam_toy.headroom`).

python toy/toy_headroom.py --help
"""

import sys

from stable_sam_toy.headroom import main


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
