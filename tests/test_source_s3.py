"""S3-only behaviour of the S3 source (the shared behaviour is in test_source_contract.py):
versioned buckets, pagination, request economy."""

from __future__ import annotations

import pytest

from fsq.sources.base import ObjectError
from fsq.sources.s3 import S3Source


def _versioned(s3):
    bucket = s3.make_bucket(versioned=True)
    c = s3.client
    c.put_object(Bucket=bucket, Key="p/a", Body=b"v1")
    c.put_object(Bucket=bucket, Key="p/a", Body=b"v2")
    c.delete_object(Bucket=bucket, Key="p/a")            # a delete marker
    c.put_object(Bucket=bucket, Key="p/a", Body=b"v3")   # current
    c.put_object(Bucket=bucket, Key="p/ab", Body=b"neighbour sharing the prefix")
    c.put_object(Bucket=bucket, Key="p/a/child", Body=b"under a 'directory' of that name")
    return bucket


def test_remove_on_versioned_bucket_deletes_every_version_of_exactly_that_key(s3):
    bucket = _versioned(s3)
    assert len(s3.all_versions(bucket, "p/a")) == 4
    src = S3Source.from_url(f"s3://{bucket}/p", s3.settings())
    src.remove("a")
    assert s3.all_versions(bucket, "p/a") == []
    assert s3.keys(bucket) == ["p/a/child", "p/ab"]
    assert len(s3.all_versions(bucket, "p/ab")) == 1
    src.remove("a")  # idempotent


def test_remove_can_leave_old_versions_when_told(s3):
    bucket = _versioned(s3)
    src = S3Source.from_url(f"s3://{bucket}/p", s3.settings(s3_delete_all_versions=False))
    src.remove("a")
    assert "p/a" not in s3.keys(bucket)
    left = s3.all_versions(bucket, "p/a")
    assert len(left) == 5 and sum(v["kind"] == "DeleteMarkers" for v in left) == 2


def test_listing_is_paginated_and_never_gets_objects(s3):
    bucket = s3.make_bucket()
    for i in range(45):
        s3.client.put_object(Bucket=bucket, Key=f"p/{i:03d}", Body=b"x" * i)
    src = S3Source.from_url(f"s3://{bucket}/p/", s3.settings())
    src.page_size = 10
    s3.start_counting()
    listed = list(src.list())
    reqs = s3.requests()
    assert [o.key for o in listed] == [f"{i:03d}" for i in range(45)]
    assert [o.size for o in listed] == list(range(45))
    assert len(reqs) == 5 and all("list-type=2" in r["query"] for r in reqs)


def test_read_is_one_ranged_get(s3):
    bucket = s3.make_bucket()
    s3.client.put_object(Bucket=bucket, Key="big", Body=b"z" * 100_000)
    src = S3Source.from_url(f"s3://{bucket}", s3.settings())
    s3.start_counting()
    with pytest.raises(ObjectError, match="too large"):
        src.read("big", max_bytes=1000)
    assert src.read("big") == b"z" * 100_000
    reqs = s3.requests()
    assert [r["method"] for r in reqs] == ["GET", "GET"]
    assert reqs[0]["headers"]["range"] == "bytes=0-1000"  # the oversized body is not fetched
    assert "range" not in reqs[1]["headers"]
    assert s3.count_gets(bucket) == 2
