"""moto's server, with its Kinesis resharding made to behave like Kinesis.

moto 5.2.5 routes every PutRecord(s) to the first shard whose hash range holds the key, open or
closed, and on a split moves the parent's records into the children. After a split, records then
keep landing in the closed parent, whose ending sequence number grows with them: a reader that has
already read the parent to its (then) end never sees them, and the children stay empty. On a
merge it copies both parents' records into the child (so each is there twice), and it only
accepts a pair of shards given lower-first. Real Kinesis writes only to open shards, keeps a closed
shard's records where they are and starts a child empty. The three functions below do the same;
everything else is moto as installed. Run with the venv's python:
`python moto_server.py -H 127.0.0.1 -p PORT` (`-p 0`: a free port, printed at start-up).
"""

import sys
from operator import attrgetter

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


models.Stream.get_shard_for_key = get_shard_for_key
models.Stream.split_shard = split_shard
models.Stream.merge_shards = merge_shards

if __name__ == "__main__":
    sys.exit(main())
