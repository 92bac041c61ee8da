"""prefetch(): items in order, the producer's error at the consumer, and no hang when the consumer stops early."""

import threading
import time

import pytest

from openseek_nanochat.convert.prefetch import prefetch


def test_items_arrive_in_order():
    assert list(prefetch(iter(range(100)), depth=2)) == list(range(100))


def test_the_producers_error_reaches_the_consumer_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("line 3: bad")

    got = []
    with pytest.raises(ValueError, match="line 3: bad"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [1, 2]


@pytest.mark.parametrize("taken", [1, 2])
def test_a_consumer_that_stops_early_is_not_kept_waiting(taken):
    # A conversion that reaches max_docs stops reading while the producer has already queued its last item and waits
    # to say it is done: closing the consumer must end the producer, not wait for it forever.
    stream = prefetch(iter(range(3)), depth=1)
    for expected in range(taken):
        assert next(stream) == expected
    time.sleep(0.3)  # the producer fills the queue and waits to hand over the rest
    closing = threading.Thread(target=stream.close, daemon=True)
    closing.start()
    closing.join(timeout=5)
    assert not closing.is_alive(), "closing the consumer waited on the producer"
