"""One exception family for every input cooppose refuses: each message names the input and the fix."""


class CoopposeError(Exception):
    """Base class of every error cooppose raises on bad input or state."""


class MeshError(CoopposeError):
    """A mesh file is missing, unreadable, empty or in implausible units."""


class CameraError(CoopposeError):
    """Intrinsics K do not fit the image, or are malformed."""


class InputError(CoopposeError):
    """An image, box, mask or depth map given to the estimator is unusable."""


class DatasetError(CoopposeError):
    """A BOP dataset folder, JSON file or results CSV is missing or malformed."""


class CheckpointError(CoopposeError):
    """A checkpoint is missing, truncated, tampered with or of the wrong kind."""


class RenderError(CoopposeError):
    """No rendering backend could be created, or a render request is invalid."""


class ConfigError(CoopposeError):
    """A configuration file or value is malformed."""
