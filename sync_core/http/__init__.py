"""HTTP plumbing both API clients share: the retry policy and its one loop, the rate budget, API-call
counters, token auth and the send-with-retries transport. Knows no service's payloads.
"""
