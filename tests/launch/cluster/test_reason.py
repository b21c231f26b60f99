"""``launch.cluster.reason``: the one line an operator sees of a failed process's output."""

from launch.cluster.reason import one_line


def test_one_line_picks_the_reason():
    text = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
            "RuntimeError: Failed to create vLLM engine config: 1 validation error for ModelConfig\n"
            "  Value error, User-specified max_model_len (40000) is greater than the derived\n"
            "    For further information visit https://errors.pydantic.dev\n")
    assert one_line(text) == ("RuntimeError: Failed to create vLLM engine config: 1 validation "
                              "error for ModelConfig: User-specified max_model_len (40000) is "
                              "greater than the derived")
