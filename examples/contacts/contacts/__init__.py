"""The contacts-import example: validate a CSV upload, enrich addresses, insert into the CRM, notify."""
