"""The GP protocol strings pinned literally to the reference text (spec generalpoints.md §3): the GP-L and GP-VL
user messages under both face rules, the expert reply, and a revision turn's messages. Released checkpoints were
trained on these bytes, so any edit of a template (a space, a newline, a quote) must fail here; the other GP
prompt tests compare the device token ids with `prompts.user_message` itself and would follow such an edit."""
from jaxrl_vlm.envs.general_points import prompt_tokens, prompts

HAND = [13, 5, 2, 10]  # K 5 2 10

# Copied from the spec's GP-L block with {target_number} = 24, {cards} = ['K', '5', '2', '10'] and the in-distribution
# face_card_msg; the leading and trailing newlines are part of the message.
GP_L_IN_DIST = """
[Task Description]
You are an expert 24 points card game player. You will receive a set of 4 cards.
Note that 'J', 'Q', and 'K' count as '10'., and each card must be used once.
Your goal is to output a formula that evaluates to 24 using numbers from the cards and operators such as '+', '-', '*', '/', '(', ')', and '='.

[Input]
Cards: ['K', '5', '2', '10']

[Output]
{
  "cards": [x, y, z, w], where 'J', 'Q', and 'K' count as '10'.,
  "number": [a, b, c, d], where a, b, c, and d are the numbers on the cards,
  "formula": 'an equation that equals 24',
}

"""

# The spec's GP-VL variant: the second line changed, no [Input] section, the json sentence before the block; here
# with the rule-OOD face_card_msg.
GP_VL_RULE_OOD = """
[Task Description]
You are an expert 24 points card game player. You are observing these four cards in the image.
Note that 'J', 'Q', and 'K' count as '11', '12', and '13' respectively., and each card must be used once.
Your goal is to output a formula that evaluates to 24 using numbers from the cards and operators such as '+', '-', '*', '/', '(', ')', and '='.

[Output]
Your response should be a valid json file in the following format:
{
  "cards": [x, y, z, w], where 'J', 'Q', and 'K' count as '11', '12', and '13' respectively.,
  "number": [a, b, c, d], where a, b, c, and d are the numbers on the cards,
  "formula": 'an equation that equals 24',
}

"""

# The spec's expert response example, byte for byte (the trailing comma is on purpose).
EXPERT_REPLY = """
{
  "cards": ['K', '5', '2', '4'],
  "number": [10, 5, 2, 4],
  "formula": "10*2+5-4=24",
}"""


def test_gp_l_user_messages_are_the_reference_text():
    """GP-L under both face rules; fails on any byte change of the GP-L template or of either face-card sentence."""
    assert prompts.user_message(HAND, face_cards_as_10=True, language_only=True) == GP_L_IN_DIST
    ood = GP_L_IN_DIST.replace("'J', 'Q', and 'K' count as '10'.",
                               "'J', 'Q', and 'K' count as '11', '12', and '13' respectively.")
    assert prompts.user_message(HAND, face_cards_as_10=False, language_only=True) == ood


def test_gp_vl_user_messages_are_the_reference_text():
    """GP-VL under both face rules; fails on a change of the GP-VL template (e.g. an [Input] section or the card
    list leaking into the image task's text)."""
    assert prompts.user_message(HAND, face_cards_as_10=False, language_only=False) == GP_VL_RULE_OOD
    in_dist = GP_VL_RULE_OOD.replace("'J', 'Q', and 'K' count as '11', '12', and '13' respectively.",
                                     "'J', 'Q', and 'K' count as '10'.")
    assert prompts.user_message(HAND, face_cards_as_10=True, language_only=False) == in_dist


def test_expert_reply_is_the_reference_text():
    """The SFT target of the spec's example hand (K 5 2 4, face cards as 10); fails on a change of the reply
    template, of the card names or of the numbers under the face rule."""
    assert prompts.expert_response([13, 5, 2, 4], "10*2+5-4", face_cards_as_10=True) == EXPERT_REPLY


def test_revision_turn_messages():
    """A revision turn appends the reply as an assistant message, then the user message 'You failed this trial
    because {feedback}'; GP-VL's first message is the image, then the text. Fails on a changed prefix, order or
    message structure."""
    messages = prompt_tokens.gp_conversation(HAND, ["first reply"], ["you recognized wrong cards"],
                                             face_cards_as_10=False, language_only=False)
    assert messages == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": GP_VL_RULE_OOD}]},
        {"role": "assistant", "content": "first reply"},
        {"role": "user", "content": "You failed this trial because you recognized wrong cards"},
    ]
    text_only = prompt_tokens.gp_conversation(HAND, ["a", "b"], ["illegal characters.", "partial solution."],
                                              face_cards_as_10=True, language_only=True)
    assert [m["content"] for m in text_only] == [
        GP_L_IN_DIST, "a", "You failed this trial because illegal characters.", "b",
        "You failed this trial because partial solution."]
