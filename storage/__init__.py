"""Durable storage for Drishtiksha: the job queue, videos and detector results.

``storage.db`` makes engines (SQLite or Postgres) and applies the migrations packaged in
``storage/migrations``; ``storage.queue.JobQueue`` is everything the daemon does with them.
"""
