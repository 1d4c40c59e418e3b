"""The "Sync Person to Microsoft" webhook (design B4, §7): ``request`` is the front door (size,
secret, body), ``handler`` does the work.
"""
