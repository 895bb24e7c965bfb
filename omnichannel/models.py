"""One app label, one migration history: every sub-package's models are imported here."""

from .analytics.models import AttributionState, Conversion, Influence  # noqa: F401
from .api.models import ApiEventReceipt, ApiKey  # noqa: F401
from .campaigns.models import (  # noqa: F401
    Campaign,
    Enrollment,
    EnrollmentLog,
    Step,
    Variant,
)
from .channels.models import (  # noqa: F401
    ChannelThrottle,
    Message,
    MessageStatusChange,
    OutboxEntry,
    Suppression,
)
from .profiles.models import (  # noqa: F401
    Consent,
    CustomerProfile,
    Event,
    Identity,
    ProfileMerge,
    PurchasedCategory,
)
from .segments.models import (  # noqa: F401
    EngagementScore,
    PurchasedProduct,
    RfmScore,
    Segment,
    SegmentSnapshot,
    SegmentSnapshotMember,
)
