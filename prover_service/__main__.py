"""``python -m prover_service``."""

from prover_service.cli import main

main()
