"""Signals the app sends: public API for host projects (arguments listed per signal)."""

from django.dispatch import Signal

#: Two profiles are about to become one; receivers may resolve rows of their own models that a
#: plain move would make collide with a unique constraint.
#: provides args: survivor, merged, reason
profiles_merging = Signal()

#: Two profiles became one (after every row moved to the survivor).
#: provides args: survivor, merged_id, merged_uuid, reason
profiles_merged = Signal()

#: A batch of events was folded into profiles.
#: provides args: events (list of Event), profile_ids (set of int)
events_folded = Signal()

#: A message's status changed (sent, delivered, opened, clicked, bounced, ...).
#: provides args: message, previous, reported
message_status_changed = Signal()

#: Before a message goes to its provider; raising SendCancelled from a receiver cancels it
#: (the message is marked suppressed with the exception's text).
#: provides args: message, channel
pre_send = Signal()
