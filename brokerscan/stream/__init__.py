"""The results stream: how scan results travel from probe workers through enrichment to the
store, over RabbitMQ.

::

    ResultPublisher (publisher.py) -> <ns>.results -> <ns>.results.raw
        -> enrichment (a StreamConsumer) -> <ns>.enriched -> <ns>.results.enriched
        -> storage (a StreamConsumer) -> the store
    anything a consumer cannot use -> <ns>.dead -> <ns>.results.dead (deadletters.py)

- :mod:`~brokerscan.stream.wire`: the message format (NDJSON batches);
- :mod:`~brokerscan.stream.topology`: the exchanges and queues, declared alike by everyone;
- :mod:`~brokerscan.stream.publisher`: at-least-once publishing with confirms;
- :mod:`~brokerscan.stream.consumer`: the consume-and-reconnect loop both consumers run;
- :mod:`~brokerscan.stream.deadletters`: validating messages, dead-lettering what fails;
- :mod:`~brokerscan.stream.status`: queue depths and dead letters, for operators;
- :mod:`~brokerscan.stream.connection`: what a lost broker raises, and the retry backoff.

The stream belongs to no stage: ``workers`` publish into it, ``enrichment`` and ``storage``
consume from it, and none of them imports another to do so.
"""
