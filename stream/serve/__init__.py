"""Serving: HTTP routes (``http``) over query functions (``queries``) that know nothing of
aiohttp, request routing between workers (``routing``) and decision logging (``decisions``)."""
