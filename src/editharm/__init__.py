"""editharm: reproduce how knowledge editing harms language models, and RECT."""

__version__ = "0.1.0"
