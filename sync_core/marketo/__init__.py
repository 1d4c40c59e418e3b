"""The Marketo REST API client (token, envelope errors, paging, lead database, activities) and the
activity-log helper. The only code that speaks HTTP to Marketo.
"""
