"""`Service`, the part of ret2-serve that holds the model, called from threads as the server calls it: usage's token
count runs beside the batch that encodes (different threads, one processor)."""

import threading

import numpy as np

from ret2.serve.app import Service


def test_token_counts_beside_encoding_leave_the_batch_padded(tiny):
    """The server counts a request's tokens in a worker thread while the encode thread tokenizes a batch with padding.
    A fast tokenizer holds its padding and truncation settings on one shared object, so the two calls must not share
    it: with a shared tokenizer, an unpadded count lands between the encode's setting and its use and the batch of
    texts of unequal lengths fails to stack into a tensor."""
    model, processor = tiny
    service = Service(model, processor, "tiny")
    samples = [("red circle", None), ("blue star left top of a green square", None), ("a", None)]
    expected = service.encode(samples, "query")
    errors, stop = [], threading.Event()

    def count():
        while not stop.is_set():
            try:
                assert service.count_tokens(samples) > 0
            except Exception as error:  # noqa: BLE001 - collected and reported below
                errors.append(error)

    counters = [threading.Thread(target=count) for _ in range(2)]
    for thread in counters:
        thread.start()
    try:
        for _ in range(150):
            np.testing.assert_allclose(service.encode(samples, "query"), expected, atol=1e-5)
    finally:
        stop.set()
        for thread in counters:
            thread.join()
    assert errors == []
