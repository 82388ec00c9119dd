"""Routes by sender: a route may carry an envelope sender pattern; a receiving domain is unique per pattern."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('routes', '0008_host_weight'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='route',
            options={'ordering': ['domain', 'sender']},
        ),
        migrations.AddField(
            model_name='route',
            name='sender',
            field=models.CharField(blank=True, default='', help_text='Envelope sender pattern: alerts@app.example, app.example, .app.example or <>; empty for every sender', max_length=320),
        ),
        migrations.AlterField(
            model_name='route',
            name='domain',
            field=models.CharField(help_text='example.com, .example.com or ALL', max_length=255),
        ),
        migrations.AddConstraint(
            model_name='route',
            constraint=models.UniqueConstraint(fields=('domain', 'sender'), name='unique_domain_sender'),
        ),
    ]
