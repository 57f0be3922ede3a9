"""``python -m falstudy ...`` = ``falstudy ...``."""

from falstudy.cli import main

main()
