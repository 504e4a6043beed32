"""casethread: a milter that threads support mail to cases."""

__version__ = "0.1.0"
