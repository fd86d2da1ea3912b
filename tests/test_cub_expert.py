"""cub-expert loader: Label Studio brush RLE written by Label Studio's own encoder."""

from pathlib import Path

import numpy as np
import pytest

from conceptree.datasets.cub_expert import decode_rle, encode_rle, load_cub_expert, mask_to_rle, rle_to_mask
from conceptree.errors import InputError

FIXTURE = Path(__file__).parent / "data" / "cub_expert"


def test_fixture_decodes_to_the_drawn_masks_with_regions_ored():
    images = load_cub_expert(FIXTURE / "saliency_maps", "/cub/images")
    expected = np.load(FIXTURE / "expected_masks.npz")
    assert [im.image_id for im in images] == ["Black_Footed_Albatross_0001_796111", "Laysan_Albatross_0002_1027"]
    assert images[0].parts == ("Beak", "Eye", "Wing")
    assert images[0].target == 0 and images[1].target == 1  # CUB folder 001 -> class 0
    assert images[0].path == Path("/cub/images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg")
    assert (images[0].height, images[0].width) == (30, 40)
    for im in images:
        assert set(im.masks) == {k.split("/")[1] for k in expected.files if k.startswith(im.image_id)}
        for label, mask in im.masks.items():
            np.testing.assert_array_equal(mask, expected[f"{im.image_id}/{label}"])
    # the two "Eye" regions are OR-ed: two separate blobs in one mask
    assert images[0].masks["Eye"].sum() == expected["Black_Footed_Albatross_0001_796111/Eye"].sum() > 13


def test_literal_chunks_decode():
    # hand-built stream: 5 words, word size 8, run sizes (3,4,8,16);
    # chunk 1: literal (flag 0), size index 0, length-1 = 2 -> words 7, 8, 9
    # chunk 2: repeat (flag 1), size index 0, length-1 = 1 -> word 255 twice
    bits = format(5, "032b") + format(7, "05b") + "".join(format(s - 1, "04b") for s in (3, 4, 8, 16))
    bits += "0" + "00" + "010" + format(7, "08b") + format(8, "08b") + format(9, "08b")
    bits += "1" + "00" + "001" + format(255, "08b")
    bits += "0" * (-len(bits) % 8)
    data = int(bits, 2).to_bytes(len(bits) // 8, "big")
    assert decode_rle(list(data)).tolist() == [7, 8, 9, 255, 255]


def test_round_trip_and_long_runs():
    mask = np.zeros((300, 300), bool)  # 360,000 words: runs longer than 2**16 are split
    mask[100:120, 5:250] = True
    np.testing.assert_array_equal(rle_to_mask(mask_to_rle(mask), 300, 300), mask)
    values = np.array([1, 1, 2, 3, 3, 3, 0])
    assert decode_rle(encode_rle(values)).tolist() == values.tolist()


def test_bad_inputs_have_clear_errors(tmp_path):
    rle = mask_to_rle(np.ones((4, 5), bool))
    with pytest.raises(InputError, match="expected 4x6x4"):
        rle_to_mask(rle, 4, 6)
    with pytest.raises(InputError, match="ends early"):
        decode_rle(rle[:6])
    with pytest.raises(InputError, match="no annotator folders"):
        load_cub_expert(tmp_path, tmp_path)
    with pytest.raises(InputError, match="annotator 'annotator9' not found"):
        load_cub_expert(FIXTURE / "saliency_maps", tmp_path, annotator="annotator9")
    bad = tmp_path / "annotator1" / "001.X"
    bad.mkdir(parents=True)
    (bad / "e.json").write_text("{not json")
    with pytest.raises(InputError, match="JSON-MIN"):
        load_cub_expert(tmp_path, tmp_path)
