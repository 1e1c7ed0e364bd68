"""``python -m mtl.cli ...`` (used by ``torchrun -m mtl.cli train``)."""
from . import main

main()
