"""REST API for the mobile app, the tills and other integrations (Django REST framework).

Include ``omnichannel.api.urls`` in the shop's urls.py; see docs/api.md.
"""
