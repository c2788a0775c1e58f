"""post_process_mask (pipeline/postprocess.py)."""

from __future__ import annotations

import numpy as np

from alphacut.pipeline.postprocess import post_process_mask

RNG = np.random.default_rng(7)


# ---------------------------------------------------------------- post_process_mask


def test_post_process_drops_far_specks_keeps_near_parts_and_fills_unsure_holes():
    mask = np.zeros((300, 300), np.uint8)
    mask[60:240, 60:240] = 255  # the subject
    mask[100:110, 100:110] = 90  # a hole the model was unsure about
    mask[200:215, 200:215] = 0  # a hole the model was sure about (between two legs)
    mask[5:9, 290:294] = 200  # a speck far away
    mask[62:66, 244:248] = 200  # a detached bit right next to the subject
    out = post_process_mask(mask)
    assert set(np.unique(out)) <= {0, 255}
    assert out[105, 105] == 255  # unsure hole filled
    assert out[207, 207] == 0  # sure hole kept
    assert out[7, 292] == 0  # far speck dropped
    assert out[64, 246] == 255  # near bit kept


def test_post_process_keeps_a_mask_without_subject_empty():
    assert not post_process_mask(np.zeros((40, 40), np.uint8)).any()
