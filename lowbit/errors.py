"""lowbit's own exception types."""


class UnsupportedError(ValueError):
    """A format cannot serve this weight, shape, dtype or device.

    Raised by ``supports``-driven checks; ``quantize_`` and autoquant catch only this
    type (never a bare ``Exception``) to skip a layer or a candidate with its reason.
    """
