"""Real datasets from their official archives, prepared, checked and resumable (``tools.prepare_data``).

One module per dataset (``imagenet``, ``lowshot``, ``variants``, ``coco``, ``ade20k``) on
shared pieces: ``archives`` (reading tar / zip / folders in place), ``extract`` (workers
on every core), ``staging`` (the temporary tree and the move into place), ``checksums``
(published digests), ``validation`` (``pretrain.data.validate`` on the staged tree),
``context`` (options, roles, count checks), ``cli`` (the sub-commands).
"""
