"""Processing on the edge: video and tracking, the agent, its durable queue, offline snapshots.

video.py     frames from files, cameras and streams
tracker.py   faces linked across frames; a few best shots embedded per track
timeline.py  video → timeline of tracks (and an annotated copy)
identity.py  who a track is: a gallery or an offline snapshot answers
snapshot.py  Ed25519-signed offline gallery snapshots, verified before use
events.py    what a device reports per track (no image by default)
queue.py     the agent's durable SQLite outbox with size caps
sync.py      uplinks (HTTP, in-memory) and the upload loop with backoff
agent.py     the agent tying them together
"""
