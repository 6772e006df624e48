"""``python -m p2w`` (also what ``torchrun -m p2w`` runs)."""

from p2w.cli import main

main()
