"""The Kafka layer: the only package that imports faust, aiokafka or kafka-python.

Every client is built from :class:`~stream.settings.Settings` in ``clients`` (security applied
once), topics are read to the *Fetch* high watermark in ``highwater`` (Tansu's ListOffsets
"latest" is wrong), the faust worker app is ``app``, the catalogue reader ``catalog_feed``, the
partition -> owner map ``membership``, and the embedded broker ``broker``.
"""
