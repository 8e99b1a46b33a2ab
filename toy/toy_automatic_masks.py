"""How well transformers' "mask-generation" pipeline finds the objects of held-out synthetic scenes, per model
(`stable_sam_toy.automatic_masks`).

    python toy/toy_automatic_masks.py --help
"""

from stable_sam_toy.automatic_masks import main


if __name__ == "__main__":
    main()
