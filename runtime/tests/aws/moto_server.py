"""moto's server, with its Kinesis resharding made to behave like Kinesis.

moto 5.2.5 routes every PutRecord(s) to the first shard whose hash range holds the key, open or
closed, and on a split moves the parent's records into the children. After a split, records then
keep landing in the closed parent, whose ending sequence number grows with them: a reader that has
already read the parent to its (then) end never sees them, and the children stay empty. On a
merge it copies both parents' records into the child (so each is there twice), and it only
accepts a pair of shards given lower-first. Real Kinesis writes only to open shards, keeps a closed
shard's records where they are and starts a child empty. The three functions below do the same;
and SQS below; everything else is moto as installed. Run with the venv's python:
`python moto_server.py -H 127.0.0.1 -p PORT` (`-p 0`: a free port, printed at start-up).
"""

import json
import sys
import threading
import time
from operator import attrgetter

from moto.core.utils import camelcase_to_underscores, unix_time_millis
from moto.sqs import models as sqs_models

from moto.kinesis import models
from moto.kinesis.exceptions import InvalidArgumentError
from moto.server import main
from moto.utilities.utils import md5_hash


def get_shard_for_key(self, partition_key, explicit_hash_key):
    if not isinstance(partition_key, str) or len(partition_key) > 256:
        raise InvalidArgumentError("partition_key")
    if explicit_hash_key:
        if not isinstance(explicit_hash_key, str):
            raise InvalidArgumentError("explicit_hash_key")
        int_key = int(explicit_hash_key)
        if int_key >= 2**128:
            raise InvalidArgumentError("explicit_hash_key")
    else:
        int_key = int(md5_hash(partition_key.encode("utf-8")).hexdigest(), 16)
    for shard in self.shards.values():
        if shard.is_open and shard.starting_hash <= int_key <= shard.ending_hash:
            return shard
    return None


def split_shard(self, shard_to_split, new_starting_hash_key):
    new_starting_hash_int = int(new_starting_hash_key)
    shard = self.shards[shard_to_split]
    if not shard.starting_hash < new_starting_hash_int < shard.ending_hash:
        raise InvalidArgumentError(message=f"NewStartingHashKey {new_starting_hash_int}")
    if not shard.is_open:
        raise InvalidArgumentError(message=f"Shard {shard.shard_id} was already split or merged")
    last_id = sorted(self.shards.values(), key=attrgetter("_shard_id"))[-1]._shard_id
    for i, (start, end) in enumerate(
        [(shard.starting_hash, new_starting_hash_int - 1), (new_starting_hash_int, shard.ending_hash)]
    ):
        child = models.Shard(last_id + 1 + i, starting_hash=start, ending_hash=end, parent=shard.shard_id)
        self.shards[child.shard_id] = child
    # Closed with its records kept, after the children exist: no write goes to it from now on.
    shard.is_open = False


def merge_shards(self, shard_to_merge, adjacent_shard_to_merge):
    shard1 = self.shards[shard_to_merge]
    shard2 = self.shards[adjacent_shard_to_merge]
    low, high = sorted([shard1, shard2], key=attrgetter("starting_hash"))
    if low.ending_hash + 1 != high.starting_hash:
        raise InvalidArgumentError(adjacent_shard_to_merge)
    if not (shard1.is_open and shard2.is_open):
        raise InvalidArgumentError(message="Shards were already split or merged")
    last_id = sorted(self.shards.values(), key=attrgetter("_shard_id"))[-1]._shard_id
    child = models.Shard(
        last_id + 1,
        starting_hash=low.starting_hash,
        ending_hash=high.ending_hash,
        parent=shard1.shard_id,
        adjacent_parent=shard2.shard_id,
    )
    self.shards[child.shard_id] = child
    # Both closed with their records kept; the child starts empty.
    shard1.is_open = False
    shard2.is_open = False


# SQS: moto 5.2.5 builds a queue's whole attribute map, message counts included, for every
# message sent (to read ContentBasedDeduplication), and counts by asking each message whether it
# is visible, so sending is quadratic in the queue's length (a queue of 6,000 messages took
# minutes to fill). The counts below are computed once, in one pass, and only when read.
_COUNTS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesDelayed",
    "ApproximateNumberOfMessagesNotVisible",
)


class _Attributes(dict):
    def __init__(self, queue, values):
        super().__init__(values)
        self._queue = queue
        self._counted = False

    def _count(self):
        if not self._counted:
            self._counted = True
            now = unix_time_millis()
            visible = delayed = hidden = 0
            for m in self._queue._messages:
                is_delayed = now < m.delayed_until
                is_visible = now > m.visible_at
                delayed += is_delayed
                hidden += not is_visible
                visible += is_visible and not is_delayed
            for k, v in zip(_COUNTS, (visible, delayed, hidden)):
                super().__setitem__(k, v)

    def __getitem__(self, key):
        if key in _COUNTS:
            self._count()
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __iter__(self):
        self._count()
        return super().__iter__()

    def items(self):
        self._count()
        return super().items()

    def values(self):
        self._count()
        return super().values()

    def copy(self):
        self._count()
        return dict(super().items())


def queue_attributes(self):
    """moto's Queue.attributes, with the counts left to _Attributes."""
    result = {}
    names = list(self.BASE_ATTRIBUTES)
    if self.fifo_queue:
        names += self.FIFO_ATTRIBUTES
    if self.kms_master_key_id:
        names += self.KMS_ATTRIBUTES
    for name in names:
        if name in _COUNTS:
            result[name] = 0  # replaced when read
        else:
            result[name] = getattr(self, camelcase_to_underscores(name))
    if self.policy:
        result["Policy"] = self.policy
    if self.redrive_policy:
        result["RedrivePolicy"] = json.dumps(self.redrive_policy)
    for key, value in result.items():
        if isinstance(value, bool):
            result[key] = str(value).lower()
    return _Attributes(self, result)


def queue_messages(self):
    """moto's Queue.messages (visible, not delayed), reading the clock once, not per message."""
    now = unix_time_millis()
    return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]


# moto's SQS changes a queue's message list from the server's threads with no lock: a
# ReceiveMessage checks that a message is visible, then marks it received, so two at once can
# both hand out the same message; a DeleteMessage rebuilds the list, so two at once (or a send
# meanwhile) can undo a delete or drop a message. Real SQS does none of this. Each of these runs
# under one lock here; a long poll waits outside it.
_sqs_lock = threading.RLock()


def _locked(f):
    def run(*args, **kwargs):
        with _sqs_lock:
            return f(*args, **kwargs)

    return run


sqs_models.Queue.add_message = _locked(sqs_models.Queue.add_message)
sqs_models.Queue.delete_message = _locked(sqs_models.Queue.delete_message)
sqs_models.SQSBackend.change_message_visibility = _locked(
    sqs_models.SQSBackend.change_message_visibility
)
_receive_message = sqs_models.SQSBackend.receive_message


def receive_message(
    self,
    queue_name,
    count,
    wait_seconds_timeout,
    visibility_timeout,
    message_attribute_names=None,
):
    end = time.monotonic() + (wait_seconds_timeout or 0)
    while True:
        with _sqs_lock:
            result = _receive_message(
                self, queue_name, count, 0, visibility_timeout, message_attribute_names
            )
        left = end - time.monotonic()
        if result or left <= 0:
            return result
        self.get_queue(queue_name).wait_for_messages(min(1, left))


sqs_models.Queue.attributes = property(queue_attributes)
sqs_models.Queue.messages = property(queue_messages)
sqs_models.SQSBackend.receive_message = receive_message
models.Stream.get_shard_for_key = get_shard_for_key
models.Stream.split_shard = split_shard
models.Stream.merge_shards = merge_shards

if __name__ == "__main__":
    sys.exit(main())
