"""The report's error type, in a module of its own so that every report module can raise it
(:mod:`medhpc.report.results` imports the evaluation's format from :mod:`medhpc.report.analyse`,
which measures attacks on detectors with :mod:`medhpc.report.adaptive`)."""

from medhpc.errors import MedhpcError


class ReportError(MedhpcError):
    """A stored result the report needs is missing or not what it should be."""
