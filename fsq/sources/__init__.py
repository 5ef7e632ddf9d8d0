"""Image sources: local directory, SFTP, S3 (see base.Source)."""

from fsq.sources.base import (ObjectError, ObjectInfo, ObjectMissing, Source, check_key,
                              open_source)

__all__ = ["ObjectError", "ObjectInfo", "ObjectMissing", "Source", "check_key", "open_source"]
