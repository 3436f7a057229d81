"""TokenUnify (Chen et al., ICCV 2025): mixture token prediction on EM
volumes with the EMmamba backbone. Importing the package registers its
modules in vistok's registries (used through ``custom_imports``)."""
from .emmamba import EMMamba, EMMambaEncoder
from .heads import TokenUnifyPerceiverHead, TokenUnifyPreceiverHead
from .pretrainer import TokenUnifyPretrainer, TokenUnifyPSNR
from .schedule_hook import TaskWeightScheduleHook
from .unetr import UNETR

__all__ = [
    'EMMamba', 'EMMambaEncoder', 'TokenUnifyPerceiverHead',
    'TokenUnifyPreceiverHead', 'TokenUnifyPretrainer', 'TokenUnifyPSNR',
    'TaskWeightScheduleHook', 'UNETR'
]
