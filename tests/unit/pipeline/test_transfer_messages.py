"""What a user reads when a push fails: the registry's words and what they mean."""

from __future__ import annotations

from pipeline.build.transfer import push_message


def test_a_registry_that_died_mid_push_is_named_and_no_partial_tag_is_promised() -> None:
    message = push_message("127.0.0.1:5055/demo", "EOF")
    assert message.startswith("pushing 127.0.0.1:5055/demo failed: EOF.")
    assert "stopped answering during the push" in message
    assert "no tag there points at a part of this one" in message
    assert message.endswith("Nothing was recorded as released.")


def test_a_refused_connection_still_says_how_to_start_the_registry() -> None:
    message = push_message("127.0.0.1:5055/demo", "dial tcp 127.0.0.1:5055: connection refused")
    assert "is not reachable" in message and "stopped answering" not in message
