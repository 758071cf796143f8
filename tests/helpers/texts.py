"""Small texts with Shakespeare's shape (speaker lines, verse) for CharLM runs."""

from __future__ import annotations

from pathlib import Path

SPEAKERS = ["ROMEO", "JULIET", "MERCUTIO", "NURSE"]
LINES = ["But soft, what light through yonder window breaks?",
         "It is the east, and Juliet is the sun.",
         "A plague o' both your houses!",
         "Parting is such sweet sorrow."]


def write_plays(path: Path, n: int = 160) -> Path:
    """`n` speeches of two verse lines each (160 -> ~20 kB)."""
    path.write_text("\n".join(f"{SPEAKERS[i % 4]}:\n{LINES[i % 4]}\n{LINES[(i * 3 + 1) % 4]}\n"
                              for i in range(n)), encoding="utf-8")
    return path
