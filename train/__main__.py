"""``python -m train`` (used by ``torchrun --nproc-per-node N -m train fit ...``)."""
from train.cli import main

main()
