"""What the image-affinity router routes on: one key per media item, read from the body as sent,
never an exception whatever the body holds."""

from types import SimpleNamespace

import pytest

from launch.api.messages import MEDIA_PARTS
from launch.router.media_keys import MAX_KEYS, MEDIA_PART_TYPES, media_keys
from tests.utils import chat_body, data_url, image_part, png, with_text


def test_the_router_knows_every_media_part_the_api_takes():
    assert set(MEDIA_PART_TYPES) == set(MEDIA_PARTS)


def test_one_key_per_item_in_order_the_same_for_the_same_reference():
    a, b = data_url(png(32, 32, seed=1), "image/png"), data_url(png(32, 32, seed=2), "image/png")
    video = {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}
    body = chat_body(with_text(image_part(a), image_part(b), image_part(a), video))
    keys = media_keys(SimpleNamespace(**body))
    assert len(keys) == 3 and len(set(keys)) == 3
    assert media_keys(body) == keys  # a dict reads the same
    again = media_keys(chat_body(with_text(image_part(b), text="Another question.")))
    assert again == [keys[1]]  # the same image, another question: the same key
    # The plain-string form of a part (``image_url: "<url>"``) is the same reference.
    assert media_keys({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": a}]}]}) == [keys[0]]


def test_many_items_are_capped():
    parts = [image_part(f"https://example.com/{i}.png") for i in range(MAX_KEYS + 5)]
    assert len(media_keys(chat_body(with_text(*parts)))) == MAX_KEYS


@pytest.mark.parametrize("body", [
    None, {}, {"prompt": "text"}, {"messages": "x"}, {"messages": [None, 3, "s"]},
    {"messages": [{"content": "plain text"}]},
    {"messages": [{"content": [None, {"type": "image_url"}, {"type": "image_url", "image_url": 5},
                               {"type": "image_url", "image_url": {"url": ""}},
                               {"type": "text", "text": "hi"}, {"type": 7}]}]},
    SimpleNamespace(prompt="no messages"),
])
def test_no_media_or_junk_gives_no_keys(body):
    assert media_keys(body) == []


def test_a_lone_surrogate_in_a_url_is_still_a_key():
    assert len(media_keys(chat_body(with_text(image_part("https://e.com/\ud800.png"))))) == 1
