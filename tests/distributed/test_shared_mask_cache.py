"""The cluster's workers share one mask cache in the S3 bucket: a map one worker computed is
found by the others."""

from __future__ import annotations

import io
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from alphacut.io.s3_mask_cache import CACHE_DIR
from alphacut.models.mask_cache import decode_entry, encode_entry
from tests.conftest import subject_image
from tests.jobhelpers import submit_and_wait, wait_until


def test_a_map_computed_by_one_worker_is_found_by_the_others(
    live_server, shared_cluster, file_server, s3_service
):
    base, root = file_server
    image, mask = subject_image()
    pixels = np.asarray(image).copy()
    pixels[0, 0] = (1, 2, 3)  # pixels of this test's own: a key no other test uses
    Image.fromarray(pixels).save(root / "shared-cache-subject.png")
    url = f"{base}/shared-cache-subject.png"
    server = live_server(shared_cluster.settings)
    store = server.state.store
    prefix = urlsplit(shared_cluster.settings.storage_url).path.strip("/")
    cached = f"{prefix}/{CACHE_DIR}/"
    before = set(s3_service.keys(cached))

    first = submit_and_wait(server.url, {"image": url})
    assert first["status"] == "success", first
    # The first job keeps its map in the bucket (written behind the answer, so soon after it).
    wait_until(lambda: set(s3_service.keys(cached)) - before, what="the map in the bucket")
    [entry] = set(s3_service.keys(cached)) - before
    key = entry.rsplit("/", 1)[1].removesuffix(".mask")
    client = s3_service.client()
    try:
        data = client.get_object(Bucket=s3_service.bucket, Key=entry)["Body"].read()
        computed = decode_entry(key, data)
        # Replace the map with a valid entry of all ones: a job that answers with a mask of 255
        # everywhere (the true mask is 0 around the subject) took its map from the bucket.
        client.put_object(
            Bucket=s3_service.bucket, Key=entry, Body=encode_entry(key, np.ones_like(computed))
        )
        first_worker = store.get(first["id"]).worker
        workers = set()
        for attempt in range(8):  # until a job lands on the other worker
            body = submit_and_wait(server.url, {"image": url, "only_mask": True})
            assert body["status"] == "success", body
            output = httpx.get(body["output"][0]).content
            alpha = np.asarray(Image.open(io.BytesIO(output)).convert("L"))
            assert alpha.min() == 255, f"attempt {attempt}: the model ran again"
            workers.add(store.get(body["id"]).worker)
            if workers - {first_worker}:
                break
        assert workers - {first_worker}, "every job ran on the first job's worker"
        assert set(s3_service.keys(cached)) - before == {entry}
    finally:
        client.delete_object(Bucket=s3_service.bucket, Key=entry)
