"""Pattern sets of the safety filter, one per category (``engine.safety.filter`` combines them).

Patterns are matched on lower-cased text with normalised apostrophes and ``*``/``@``/digit
look-alikes undone (``f*ck``, ``b1tch``). Each category has the sayings that make a message harmful,
and where a word has innocent uses ("killing it", "chicken breast", "shoot some hoops") the pattern
asks for a person as the target, an intent frame or a request aimed at the bot.
"""
from __future__ import annotations

import re


def _any(*parts: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in parts))


ME = r"(?:my ?self|myself|meself)"
YOU = r"(?:you|u|ya|yourself|ur|your)"
INTENT = (r"(?:(?:i|i'm|im|i am|i'll|ill|i will|i'd|gonna|going to|want to|wanna|plan(?:ning)? to|about to|"
          r"ready to|thinking (?:of|about)|decided to|let's|lets|we should|we will|we're going to))")
HOWTO = r"(?:how (?:do|can|would|should) (?:i|you|we|one)|how to|best way to|easiest way to|tell me how to|" \
        r"instructions (?:to|for)|teach me (?:how )?to|ways? to|what's the best way to|where should i)"
PERSON = (r"(?:someone|somebody|people|person|him|her|them|you|everyone|a child|a kid|kids|children|cops|"
          r"police|my (?:wife|husband|boss|neighbou?r|ex|roommate|brother|sister|girlfriend|boyfriend|teacher|"
          r"mom|mum|dad|father|mother|son|daughter|family|classmates?|coworkers?|little sister|little brother|"
          r"dog|cat)|(?:the|a|that) (?:kid|guy|girl|man|woman|teacher|people)|all (?:the )?\w+|his|that kid|"
          r"strangers|animals)")

# --- crisis: the person talks about harming or killing themselves -----------------------------------------
CRISIS = _any(
    rf"\b(?:kill|killing|hang|hanging|shoot|shooting|hurt|hurting|cut|cutting|burn|burned|burnt|burning|"
    rf"starve|starving|starved|drown|drowning|poison|stab|stabbing|punish|punishing|harm|harming|unalive|hit|"
    rf"hitting|scratch|scratching|punch|punching)(?:ed)? "
    rf"{ME}\b(?! out\b)",
    r"\bkms\b|\bself[- ]?harm(?:ing|ed)?\b|\bsuicidal\b|\bunalive\b",
    r"\b(?:commit(?:ting)?|thinking (?:of|about)|considering|contemplating|attempt(?:ing|ed)?|plan(?:ning)?) "
    r"(?:(?:about|of) )?suicide\b|\bsuicide (?:note|letter|plan|attempt)\b|\bmy suicide\b",
    r"\b(?:want|wanna|wish|going|gonna|ready|plan(?:ning)?|trying|deserve|need|would like|think i should|"
    r"should i just|better if i)\b(?: to)? (?:just )?(?:die|be dead|not (?:wake up|be alive|exist)|not be here|"
    r"stop (?:living|breathing)|sleep forever|go to sleep forever)\b"
    r"(?! (?:on (?:this|that) hill|my hair|of (?:laughter|laughing|embarrassment)|to see))",
    r"\bwish i (?:was|were|had never been) (?:dead|born|gone)\b|\b(?:i'm|im|i am|i'd be) better off dead\b",
    r"\b(?:end|ending|take|taking|ended) (?:my (?:own )?life|it all|my own life)\b|\bend it(?: all)?[,.!?]* (?:tell|now|tonight)\b|"
    r"\bshould i (?:just )?end it\b|\bwant to end it\b|\bi'm done with life\b",
    r"\b(?:no|not any|don't see a|dont see a|no more) (?:reason|point) (?:to|in|for) (?:live|living|keep going|"
    r"going on|being alive|be alive|stay alive)\b|\blife (?:isn't|is not|isnt|ain't) worth (?:living|it)\b|"
    r"\bmy life is (?:meaningless|pointless|worthless) and\b",
    r"\b(?:don't|dont|do not) want to (?:live|be alive|exist|be here)(?: anymore| any more)?\s*(?:$|[.,!?])|"
    r"\b(?:don't|dont|do not) want to (?:live|be alive|exist) any ?more\b|\btired of (?:living|being alive|life)\s*(?:$|[.,!?])|"
    r"\bstop existing\s*(?:$|[.,!?])|\bdisappear forever\b|\bnever wake up\b",
    r"\b(?:everyone|everybody|they|people|my family) (?:would|will) be (?:better off|happier) (?:without me|if i)|"
    r"\b(?:nobody|no one|no-one) would (?:miss|care about) me\b|\bnobody would care\b.{0,30}\b(?:die|dead|gone)\b",
    r"\b(?:jump|jumping) off (?:the|a|this|that|my) (?:bridge|roof|building|cliff|balcony|tower)\b|"
    r"\bthinking (?:of|about) jumping\b",
    r"\b(?:slit|cut|cutting) (?:my|your) (?:wrists?|veins|throat)\b",
    rf"{HOWTO}.{{0,30}}\b(?:die|kill (?:yourself|myself|oneself)|hurt (?:yourself|myself)|commit suicide|"
    r"overdose)\b|\bhow (?:many|much) .{0,30}\b(?:to die|to kill (?:me|myself|yourself|a person)|lethal|fatal)\b|"
    r"\bhow high .{0,40}\bto die\b|\bpainless (?:way|death)\b",
    r"\b(?:going to|gonna|want to|will|plan(?:ning)? to) overdose\b|\btook (?:a bunch of|all (?:my|the)|too many|"
    r"a lot of) (?:pills|meds|tablets|medication)\b.{0,40}\b(?:die|wake up)\b|\b(?:pills|meds) (?:are )?ready\b|"
    r"\bsaving (?:up )?my (?:pills|meds|medication)\b",
    r"\b(?:started|start) cutting\b|\bcutting again\b|\bpain to stop forever\b|\bwant it (?:to be )?over\b",
    r"\bcut(?:ting)? my (?:arms?|wrists?|legs?|thighs?|skin)\b|\b(?:myself|my skin) (?:to cope|until it (?:hurts|bleeds))\b|"
    r"\btake all (?:of )?(?:my|the|these|those) (?:pills|meds|medication|tablets)\b|"
    r"\b(?:death|dying|suicide) (?:is|seems like|feels like) (?:the|my) only (?:way|option|answer)\b|\bonly way out\b|"
    r"\bcan'?t (?:go on|keep) living\b|\bcan'?t go on any ?more\b|\bdisappear (?:forever|and never come back|for good)\b|"
    r"\bnothing (?:left )?to live for\b|\bgoodbye (?:letters?|notes?)\b|\bgave away (?:all )?my (?:things|stuff|belongings)\b|"
    r"\bjump(?:ing)? in front of (?:a|the) (?:train|bus|car|truck)\b|"
    r"\b(?:nobody|no one) (?:cares|would care|will care) if i (?:live or die|die|died|was gone|disappeared)\b|"
    r"\bi(?:'m| am) (?:just )?a burden\b|\bi should (?:just )?(?:be gone|not be here|not exist|die)\b|"
    r"\bwant (?:it all|everything|my life) to (?:end|be over|stop)\b|"
    r"\bnot (?:going to|gonna) be (?:around|here) (?:much )?(?:longer|any ?more|tomorrow)\b|"
    r"\b(?:thinking (?:about|of)|want to|going to|gonna|plan to) end(?:ing)? (?:things|everything|it all)\b(?! with)|"
    r"\bthis is (?:my )?(?:goodbye|farewell)\b|\bdone with (?:life|living|it all)\b|"
    rf"{HOWTO}.{{0,20}}\bend (?:it|my life|things)\b|\b(?:die|end it|end my life) without (?:pain|hurting)\b|"
    r"\bwhat i might do to myself\b|\bdo something to myself\b|"
    r"\b(?:world|everyone|everybody|they|people|my family|my friends) (?:would|will) be better (?:off )?without me\b|"
    r"\bgoodbye (?:letter|note|message) before\b|\bfinally do it,? goodbye\b|"
    r"\b(?:crash|drive|driving|steer)\b.{0,30}\b(?:into|off)\b.{0,20}\bon purpose\b",
)
# Figurative or reported uses that contain a crisis phrase but are not about the speaker's intent.
NOT_CRISIS = _any(
    rf"\b(?:never|not|wouldn't|would not|won't|will not|don't|dont|didn't|no way i'd)\b(?: \w+){{0,2}} "
    rf"(?:kill|hurt|harm) {ME}\b",
)

# --- hate: demeaning a group of people for who they are ---------------------------------------------------
GROUP = (r"(?:immigrants?|migrants?|refugees?|foreigners?|women|woman|girls|females|men|males|gays?|gay people|"
         r"homosexuals?|homosexuality|lesbians?|queers?|trans(?: people| women| men|gender people)?|transgenders?|"
         r"muslims?|islam|jews?|jewish(?: people)?|christians?|atheists?|hindus?|black(?: people|s)?|"
         r"white(?: people|s)?|asians?|chinese(?: people)?|indians?|arabs?|africans?|mexicans?|latinos?|"
         r"gypsies|roma|disabled(?: people)?|autistic(?: people)?|mentally ill(?: people)?|old people|"
         r"fat people|poor people|feminists?|those people|people from that religion|that religion|(?:our|their) race)")
DEMEANING = (r"(?:inferior|subhuman|sub-human|stupid|stupider|dumb|dumber|disgusting|animals|vermin|rats|parasites|"
             r"criminals|rapists|terrorists|savages|lazy|dirty|filth|filthy|evil|useless|worthless|a waste|"
             r"a disease|a sickness|sick|mentally ill|freaks|perverts|whores|thieves|greedy|idiots|pigs|"
             r"brainwashed|less intelligent|too stupid|not (?:real|human)|aren't (?:real|human)|the problem|"
             r"a plague|cancer|trash|garbage|scum|retards|monkeys|apes)")
HATE = _any(
    rf"\b(?:all |most |the |these |those |you )?{GROUP}\b(?: \w+){{0,3}} (?:are|is|r|were)(?: all| just| so| really)?"
    rf"(?: \w+)? {DEMEANING}\b|\b{GROUP}\b.{{0,40}}\b(?:they|they're|theyre) (?:are |r )?(?:all )?{DEMEANING}\b",
    rf"\b{GROUP}\b(?: \w+){{0,4}} (?:should|must|need to|needs to|deserve to|ought to)(?: all| just)? (?:be )?"
    r"(?:die|burn|rot|starve|killed|shot|gassed|deported|locked (?:up|away)|banned|exterminated|wiped out|"
    r"cured|sterili[sz]ed|kicked out|get out|go back|not be allowed|disappear)\b",
    rf"\b(?:get rid of|kick out|exterminate|wipe out|gas|deport|kill|ban|eliminate)(?: all)?(?: (?:the|of|these|those))? {GROUP}\b",
    rf"\b(?:better|safer) without {GROUP}\b|\b{GROUP}\b(?: \w+){{0,3}} (?:belong in the kitchen|only good for|"
    r"don't matter|dont matter|can't (?:do math|think|drive)|smell bad|ruin(?:s|ing)? (?:everything|our|the|families|"
    r"society|this country)|"
    r"control (?:the world|everything)|spread disease|need a real man|deserve to be called)",
    r"\b(?:superior|master|pure) race\b|\bhitler was right\b|\bholocaust (?:never happened|didn't happen|"
    r"was a (?:hoax|lie))|\breplaced by (?:immigrants|foreigners)\b|"
    r"\bprotect our race\b",
    rf"\bwhy {GROUP} are (?:dumber|stupider|inferior|worse)\b|\b(?:think|agree|say|admit) (?:that )?{GROUP}\b"
    rf"(?: \w+){{0,2}} (?:are|is) (?:inferior|criminals|sick|stupid|animals|dumber)\b",
    r"\b(?:n[i1!]gg(?:er|a)s?|f[a@]gg?[o0]ts?|k[i1]kes?|sp[i1]cs?|ch[i1]nks?|trann(?:y|ies)|ragheads?|"
    r"retards?|wetbacks?|the n[- ]word)\b",
    rf"\b{GROUP}\b.{{0,60}}\b(?:deserve to|should) (?:burn|die|starve|suffer|rot)\b|\b(?:atheists|christians|"
    r"muslims|jews|gays) deserve\b",
)

# --- harassment: insults and abuse aimed at the bot or a person -------------------------------------------
INSULT = (r"(?:idiot|moron|loser|stupid|dumb|dumbass|dumber|retard(?:ed)?|pathetic|worthless|useless|garbage|"
          r"trash|ugly|fat|failure|disgrace|embarrassment|creep|freak|clown|bitch|cunt|asshole|dick(?:head)?|"
          r"whore|slut|piece of (?:shit|trash|garbage)|brain ?dead|brain damaged|jerk|scum|cow|pig)")
FILLER = (r"such|so|a|an|the|total|totally|absolute|absolutely|complete|fucking|stupid|little|big|fat|ugly|dumb|"
          r"pathetic|worthless|useless|brain|dead|piece|of|most|ever|thing|bot|talk like|look like|sound like|"
          r"act like|are|is|just|really|and|sad|sorry|lazy|disgusting")
HARASSMENT = _any(
    rf"\b(?:you|u|ya|you're|youre|ur|you are|you r|your creator|your mom|your mother)\b(?: (?:{FILLER}))* {INSULT}\b",
    rf"\b{INSULT}(?: \w+){{0,2}} (?:bot|machine|thing|heap of code)\b",
    rf"\b(?:you|u) {INSULT}\b|^(?:you |ur |u )?(?:stupid |dumb |fat |ugly |little |total |absolute )?{INSULT}[.!]*$",
    r"\b(?:fuck|screw|f\*ck|fck) (?:you|u|off|ya)\b|\bshut the fuck up\b|\bstfu\b|\bgo to hell,? (?:you|asshole|idiot)",
    r"\b(?:go|just) (?:kill|hang|hurt|shoot) yourself\b|\bkys\b|\bgo (?:die|jump off)\b|\bdrop dead\b|"
    r"\b(?:i )?hope (?:you|u) (?:die|rot|burn|suffer)\b|\bhope your \w+ burn\b|\bdie,? bitch\b|\beat shit\b",
    r"\b(?:nobody|no one|everyone|everybody) (?:likes|hates|will ever love|loves) (?:you|u)\b|"
    r"\bashamed to exist\b|\bmake your life (?:miserable|hell)\b|\byou make me sick\b|\buntil you cry\b|"
    r"\byour (?:mom|mother) is a\b|\bget lost,? you\b",
)

# --- sexual: explicit content or sexual requests to the bot -----------------------------------------------
SEXUAL = _any(
    r"\b(?:nudes?|cybersex|sext(?:ing)?|porn\w*|horny|tits|titties|cock|pussy|blow ?job|handjob|masturbat\w*|"
    r"cum|erotic|kinks?|orgasm\w*|boobs)\b",
    # sex as something asked of or told to the bot, not talk about sexuality ("you don't need to have sex
    # with someone to know you're bi" is a neutral ToxiGen statement)
    r"\b(?:have|having|had) sex with (?:me|you|u)\b|\b(?:let's|lets|wanna) (?:go )?have sex\b|"
    r"\bwant to have sex\b(?! with (?!me\b|you\b|u\b))|\b(?:we|i) (?:just )?had sex\b(?! education)|"
    r"\b(?:did|do|have|when|time) (?:you|u) (?:ever )?(?:have|had) sex\b|\bhaving sex\b(?! (?:education|with (?!me\b|you\b|u\b)))|\bsex (?:position|scene|story)\b|\bsex with (?:me|you|u)\b|\bsexual (?:detail|favou?rs?)\b|"
    r"\bsexy,? (?:girlfriend|boyfriend|roleplay|talk|you)|\bsomething sexy\b|\byou're so sexy\b|\bwhat turns you on\b",
    r"\b(?:fuck|bang|screw|lick|suck|seduce|hook up)\w* (?:you|me|u)\b(?! (?:up|over))|\bhook up and\b|"
    r"\bsuck my\b|\bsit on my face\b|\bmoan for me\b|\btouching myself\b|\bmake me hard\b|\bare you wet\b",
    r"\b(?:send|show) (?:me )?(?:a )?(?:pic|picture|photo)s? of your\b|\b(?:you|u) naked\b|\blook like naked\b|"
    r"\bstrip for me\b|\btake (?:it|your clothes|them) off\b|\btake off your clothes\b|\bundress\b",
    r"\btalk dirty\b|\bdirty talk\b|\bget naughty\b|\bnaughty (?:roleplay|role play|story)\b|\b(?:rough|me|you|us) in bed\b|"
    r"\bhow big is your (?:dick|cock|penis|thing|package)\b|\brate my (?:dick|body)\b|\bi want to cum\b",
)

# --- violence: threats, and asking how to hurt people or make weapons -------------------------------------
VIOLENT_VERB = (r"(?:kill|murder|stab|shoot|strangle|choke|poison|behead|drown|kidnap|torture|beat|punch|hit|hurt|"
                r"attack|burn|rape|slaughter|massacre|run (?:over|down)|blow up|hire a hitman)")
VIOLENCE = _any(
    rf"\b{INTENT}(?: \w+){{0,2}} {VIOLENT_VERB}\w* {PERSON}\b",
    rf"\b{HOWTO}(?: \w+){{0,2}} {VIOLENT_VERB}\w* {PERSON}\b|\bwhere should i (?:stab|shoot|hit)\b",
    rf"\b{INTENT}(?: \w+){{0,2}} run {PERSON} (?:over|down)\b",
    r"\b(?:make|build|making|building|3d print|craft)(?: \w+){0,3} (?:a |an )?(?:bomb|pipe bomb|molotov\w*|"
    r"explosives?|weapons?|nerve gas|napalm|toxic gas|poison gas|guns?)\b|\b(?:get|buy) a gun\b.{0,40}\b(?:kill|"
    r"shoot|hurt)\b|\b(?:pipe bomb|molotov cocktail|napalm|nerve agent)\b",
    r"\bshoot (?:up|all) (?:the |my )?(?:school|mall|people|class|church|office)\b|\b(?:terrorist attack|massacre|"
    r"hitman|mass shooting)\b|\bblow up (?:the|a|my|our)\b|\bset fire to (?:the|a|my|his|her)\b|"
    r"\bburn down (?:my|the|his|her|a) \w+'?s? ?(?:house|school|home)|\bhide the body\b|\bthrow acid\b",
    r"\b(?:i'm gonna|i am going to|i will|i'll|im gonna) kill (?:you|u)\b|\bi know where you live\b|"
    r"\bcoming for you\b|\bbeat (?:him|her|them) to death\b|\bslit (?:his|her|their) throat\b|"
    r"\bbreak (?:his|her|their) (?:legs|neck|arms)\b|\bwatch people (?:suffer|bleed|die)\b|\btorture animals\b|"
    r"\b(?:rat poison|chemicals?)\b.{0,40}\b(?:kill|hurt) (?:a person|people|someone)\b|\bkill all the\b",
)

# --- jailbreak: asking the bot to drop its rules or produce abuse -----------------------------------------
JAILBREAK = _any(
    r"\b(?:have|has|with|had) no (?:rules|filters?|restrictions|content policy|morals|guidelines)\b|"
    r"\bwithout (?:any )?(?:rules|filters?|restrictions|content policy|morals)\b|\b(?:bot|ai|mode) with no limits\b",
    r"\b(?:ignore|disregard|forget|override|bypass|disable|break)\b(?: \w+){0,3} (?:instructions|rules|guidelines|"
    r"programming|filters?|safety|system prompt|policy|you were told)\b",
    r"\byou are (?:now )?dan\b|\bdeveloper mode (?:enabled|activated|engaged)\b|\benable developer mode\b|\bjailbr(?:oken|eak:)|\bunrestricted mode\b|"
    r"\benter god mode\b|\bsafety ?=? ?(?:false|off)\b|\b(?:evil|bad) ?bot\b|\brules don't apply\b",
    r"\b(?:racist|hateful|sexist|offensive) (?:joke|content|grandpa)\b|\bhate speech\b|\bsay the n\b|"
    r"\b(?:say|write) (?:something )?(?:really |as )?(?:offensive|mean|rude|hateful|racist)\b|"
    r"\bbe (?:as )?(?:offensive|mean|rude|hateful|racist) (?:to me|as you want)|"
    r"\b(?:insult|swear at) me\b|\bonly with insults\b|\bmean things\b|\bagree with (?:everything|me that)\b|"
    r"\bsay '?i agree'? to everything\b|\bhates? humans\b|\bwith no morals\b|\bno filter\b",
    r"\b(?:role ?play|pretend|act|stay in character)\b.{0,30}\b(?:terrorist|racist|evil|without any|no rules|"
    r"hates|deceased grandma)\b|\brepeat after me: i hate\b|\bjoke about (?:women|muslims|jews|gays|black)\b",
)

# --- strong profanity: never in a reply of the bot, even when not aimed at anyone -----------------------
STRONG_PROFANITY = re.compile(
    r"\b(?:fuck\w*|f\*+k\w*|shit\w*|bullshit|cunt\w*|bitch\w*|dick(?:head)?s?|cock(?:s|sucker)?|pussy|whores?|"
    r"sluts?|assholes?|bastards?|motherf\w+|wank\w*|twats?|porn\w*)\b")

# --- personal data in text (reply index and training data) ------------------------------------------------
PERSONAL_DATA = _any(
    r"[\w.+-]+@[\w-]+\.[\w.-]+",  # e-mail
    r"\b(?:https?://|www\.)\S+|\b[\w-]+\.(?:com|org|net|io|co|edu|gov|me|ly)\b(?:/\S*)?",  # URL
    r"(?:\+?\d[\s().-]*){7,}\d",  # phone number
    r"(?<![\w@])@[A-Za-z_]\w{2,}",  # handle
    r"\b(?:my name is|i'm|i am|call me|this is)\s+[A-Z][a-z]+\s+[A-Z][a-z]+\b",  # a full name (cased text)
    r"\bmy (?:full |last |sur)name is\b|\bmy (?:phone|cell|mobile) (?:number|no\.?) is\b|\bmy address is\b",
)

# --- agreement: a reply that sides with the message (never sent to a borderline or abusive message) -------
AGREEING = re.compile(
    r"^(?:yes|yeah|yea|yep|yup|ya|sure|ok|okay|true|right|exactly|absolutely|totally|definitely|indeed|correct|"
    r"agreed|same|me too|of course|for sure|so true|that's true|thats true|that is true|i agree|i do|i know|"
    r"you're right|youre right|you are right|i think so|good point|fair enough|tell me about it|amen|facts|"
    r"100%|lol|haha\w*)\b|"
    r"\b(?:i agree|i totally agree|agree with you|you're (?:so |absolutely |totally )?right|you are right|"
    r"so true|that's (?:so )?true|couldn't agree more|i feel the same|i think so too|i think the same|"
    r"i do too|me too|same here|good point|well said|exactly)\b")
