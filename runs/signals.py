from django.contrib.auth import get_user_model
from django.db.models.signals import post_save
from django.dispatch import receiver


@receiver(post_save, sender=get_user_model())
def put_new_user_in_a_team(sender, instance, created, raw=False, **kwargs):
    if created and not raw:
        from runs.services import ensure_team

        ensure_team(instance)
