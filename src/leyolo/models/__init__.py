"""Model families. Importing this package registers every family in the registry."""

from . import leyolo  # noqa: F401  (registers leyolo-n/s/m/l)
