"""Results: orders attributed to messages, A/B and holdout uplift, campaign reports."""
