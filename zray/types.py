"""zray.types: Ray's ``ray.types`` (the ObjectRef type, for annotations)."""

from zray.object_ref import ObjectRef

__all__ = ["ObjectRef"]
