"""Small in-memory fakes of the two services, as ``httpx.MockTransport`` handlers, for unit tests.

Independent of ``sandbox/`` (the faithful reference): each fake answers only what
``MarketoClient`` and ``DataverseClient`` call during a cycle, in the shapes they read, and
offers a few helpers to act as a user of that system (create, edit, delete, qualify).
"""

from tests.fakes.clock import Clock
from tests.fakes.dataverse import FakeDataverse
from tests.fakes.marketo import FakeMarketo

__all__ = ["Clock", "FakeDataverse", "FakeMarketo"]
