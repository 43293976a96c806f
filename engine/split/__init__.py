"""Split mode: adapters hand messages to engine workers over Redis Streams.

``gateway.py`` is the adapter side, ``worker.py`` the engine side, ``common.py`` what both use.

    adapter process (rapport telegram ...)              worker processes (rapport worker, any number)
    StreamGateway.handle(msg) --XADD--> P:{S}:in --XREADGROUP, group "workers"--> StreamWorker -> Engine.answer
          ^                                                                                   |
          +-- the caller's future <-- XREADGROUP, group "gateways" <-- P:{S}:out:G <-- XADD --+ (once, in a script)

The stream is sharded (``RAPPORT_STREAM_SHARDS``, default 1): a user's messages always go to one shard S,
and every key a script touches for them carries S's hash tag, so on a Redis Cluster each script runs on
one slot and the shards spread over the masters. Workers read every shard (or ``RAPPORT_WORKER_SHARDS``).

Delivery is at least once; the effect is once:
- the gateway drops platform redeliveries (the engine's ``P:msg`` marker) and a publish retried after a
  lost connection is recognised by its request id (``P:pub:R``);
- each user's messages get sequence numbers in the same script that appends them to the stream, and a
  worker starts message n of a user only after n-1 is answered (``P:{S}:done:U``): order holds across workers;
- the gateway keeps each message until its reply comes: a publish that a failed-over master lost is made
  again, before the user's later messages (each publish checks its predecessor's ``P:{S}:pub:R``), and a
  second reply to one request is dropped;
- a worker that dies leaves its entries pending; live workers take them over with XAUTOCLAIM once they
  have been idle ``claim_idle_s`` (a live worker keeps its own entries fresh with XCLAIM ... JUSTID);
- one script publishes the reply, marks the request answered (``P:answered:R``), advances ``P:done:U``,
  acknowledges and deletes the entry: a second worker finishing the same entry publishes nothing, and
  the engine answers a message whose reply is already in the history with that same reply.

Keys (``P`` prefix, ``S`` the shard's hash tag, ``U`` = platform:user_id, ``G`` gateway id, ``R`` request id):
  P:{S}:in          stream of requests {msg, reply_to, req, seq}; entries deleted once answered
  P:{S}:out:G       stream of replies {req, reply} for gateway G; deleted once read; capped ~10,000
  P:{S}:seq:U       last sequence number given to U's messages           TTL 7 days
  P:{S}:done:U      last sequence number answered for U                  TTL 7 days
  P:{S}:pub:R       request R was published                              TTL 1 day
  P:{S}:answered:R  request R's reply was published                      TTL 1 day
"""
