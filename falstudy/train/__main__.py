"""``python -m falstudy.train ...`` = ``falstudy train ...`` (what sweep trials run)."""

from falstudy.cli import main

main(["train", *__import__("sys").argv[1:]])
