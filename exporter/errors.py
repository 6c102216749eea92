"""The one exception type the exporter raises for problems a user can fix."""


class ExportError(RuntimeError):
    """The model, the layer or an op cannot be exported; the message says why and what to do."""
