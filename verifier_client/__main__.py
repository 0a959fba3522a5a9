"""``python -m verifier_client``."""

from verifier_client.cli import main

main()
