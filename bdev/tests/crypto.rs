//! The crypto vbdev: IEEE 1619 known answers, equality with the `xts-mode`
//! crate, named keys, the I/O path over malloc and null bdevs (split
//! segments, chunked writes, write zeroes, pass-through types), a volume
//! decrypted by OpenSSL, the tweak modes, and resize and removal through
//! one and two layers.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes::cipher::{Array, KeyInit};
use aes::{Aes128, Aes256};
use bdev::modules::crypto::{self, Direction, XtsCipher};
use bdev::modules::{malloc, null, passthru};
use bdev::{BdevError, BdevEvent, BdevIo, IoStatus, IoType, IoVec};
use common::on;
use dma::DmaBuf;
use xts_mode::{Xts128, get_tweak_default};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn nop(_: &str, _: BdevEvent) {}

// ---------------------------------------------------------------------------
// IEEE P1619/D16 Annex B test vectors (IEEE Std 1619-2007).
//
// Keys: vectors 1-3 as listed; vectors 4-9 XTS-AES-128 with
// key1 = 27182818284590452353602874713526, key2 = 31415926535897932384626433832795;
// vectors 10-14 XTS-AES-256 with
// key1 = 2718281828459045235360287471352662497757247093699959574966967627,
// key2 = 3141592653589793238462643383279502884197169399375105820974944592.
// Data unit sequence numbers are the tweak (little-endian). Plaintexts: 32
// bytes of 00 (vector 1) or 44 (2, 3); 00..ff twice (4, 10-14); the
// previous vector's ciphertext (5, 6, 8, 9 — so the standard lists them);
// vector 7's own.
// ---------------------------------------------------------------------------

const K128_1: &str = "27182818284590452353602874713526";
const K128_2: &str = "31415926535897932384626433832795";
const K256_1: &str = "2718281828459045235360287471352662497757247093699959574966967627";
const K256_2: &str = "3141592653589793238462643383279502884197169399375105820974944592";

// Ciphertexts of IEEE P1619/D16 Annex B (IEEE Std 1619-2007), as published
// (transcribed from Botan's src/tests/data/modes/xts.vec, whose numbering
// follows the standard, and cross-checked against OpenSSL's EVP AES-XTS).
const V1_CTX: &str = "917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e";
const V2_CTX: &str = "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0";
const V3_CTX: &str = "af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89";
const V4_CTX: &str = concat!(
    "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c",
    "c78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412",
    "328063fd2aab53e5ea1e0a9f332500a5df9487d07a5c92cc512c8866c7e860ce",
    "93fdf166a24912b422976146ae20ce846bb7dc9ba94a767aaef20c0d61ad0265",
    "5ea92dc4c4e41a8952c651d33174be51a10c421110e6d81588ede82103a252d8",
    "a750e8768defffed9122810aaeb99f9172af82b604dc4b8e51bcb08235a6f434",
    "1332e4ca60482a4ba1a03b3e65008fc5da76b70bf1690db4eae29c5f1badd03c",
    "5ccf2a55d705ddcd86d449511ceb7ec30bf12b1fa35b913f9f747a8afd1b130e",
    "94bff94effd01a91735ca1726acd0b197c4e5b03393697e126826fb6bbde8ecc",
    "1e08298516e2c9ed03ff3c1b7860f6de76d4cecd94c8119855ef5297ca67e9f3",
    "e7ff72b1e99785ca0a7e7720c5b36dc6d72cac9574c8cbbc2f801e23e56fd344",
    "b07f22154beba0f08ce8891e643ed995c94d9a69c9f1b5f499027a78572aeebd",
    "74d20cc39881c213ee770b1010e4bea718846977ae119f7a023ab58cca0ad752",
    "afe656bb3c17256a9f6e9bf19fdd5a38fc82bbe872c5539edb609ef4f79c203e",
    "bb140f2e583cb2ad15b4aa5b655016a8449277dbd477ef2c8d6c017db738b18d",
    "eb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568",
);
const V5_CTX: &str = concat!(
    "264d3ca8512194fec312c8c9891f279fefdd608d0c027b60483a3fa811d65ee5",
    "9d52d9e40ec5672d81532b38b6b089ce951f0f9c35590b8b978d175213f329bb",
    "1c2fd30f2f7f30492a61a532a79f51d36f5e31a7c9a12c286082ff7d2394d18f",
    "783e1a8e72c722caaaa52d8f065657d2631fd25bfd8e5baad6e527d763517501",
    "c68c5edc3cdd55435c532d7125c8614deed9adaa3acade5888b87bef641c4c99",
    "4c8091b5bcd387f3963fb5bc37aa922fbfe3df4e5b915e6eb514717bdd2a7407",
    "9a5073f5c4bfd46adf7d282e7a393a52579d11a028da4d9cd9c77124f9648ee3",
    "83b1ac763930e7162a8d37f350b2f74b8472cf09902063c6b32e8c2d9290cefb",
    "d7346d1c779a0df50edcde4531da07b099c638e83a755944df2aef1aa31752fd",
    "323dcb710fb4bfbb9d22b925bc3577e1b8949e729a90bbafeacf7f7879e7b114",
    "7e28ba0bae940db795a61b15ecf4df8db07b824bb062802cc98a9545bb2aaeed",
    "77cb3fc6db15dcd7d80d7d5bc406c4970a3478ada8899b329198eb61c193fb62",
    "75aa8ca340344a75a862aebe92eee1ce032fd950b47d7704a3876923b4ad6284",
    "4bf4a09c4dbe8b4397184b7471360c9564880aedddb9baa4af2e75394b08cd32",
    "ff479c57a07d3eab5d54de5f9738b8d27f27a9f0ab11799d7b7ffefb2704c95c",
    "6ad12c39f1e867a4b7b1d7818a4b753dfd2a89ccb45e001a03a867b187f225dd",
);
const V6_CTX: &str = concat!(
    "fa762a3680b76007928ed4a4f49a9456031b704782e65e16cecb54ed7d017b5e",
    "18abd67b338e81078f21edb7868d901ebe9c731a7c18b5e6dec1d6a72e078ac9",
    "a4262f860beefa14f4e821018272e411a951502b6e79066e84252c3346f3aa62",
    "344351a291d4bedc7a07618bdea2af63145cc7a4b8d4070691ae890cd65733e7",
    "946e9021a1dffc4c59f159425ee6d50ca9b135fa6162cea18a939838dc000fb3",
    "86fad086acce5ac07cb2ece7fd580b00cfa5e98589631dc25e8e2a3daf2ffdec",
    "26531659912c9d8f7a15e5865ea8fb5816d6207052bd7128cd743c12c8118791",
    "a4736811935eb982a532349e31dd401e0b660a568cb1a4711f552f55ded59f1f",
    "15bf7196b3ca12a91e488ef59d64f3a02bf45239499ac6176ae321c4a211ec54",
    "5365971c5d3f4f09d4eb139bfdf2073d33180b21002b65cc9865e76cb24cd92c",
    "874c24c18350399a936ab3637079295d76c417776b94efce3a0ef7206b151105",
    "19655c956cbd8b2489405ee2b09a6b6eebe0c53790a12a8998378b33a5b71159",
    "625f4ba49d2a2fdba59fbf0897bc7aabd8d707dc140a80f0f309f835d3da54ab",
    "584e501dfa0ee977fec543f74186a802b9a37adb3e8291eca04d66520d229e60",
    "401e7282bef486ae059aa70696e0e305d777140a7a883ecdcb69b9ff938e8a42",
    "31864c69ca2c2043bed007ff3e605e014bcf518138dc3a25c5e236171a2d01d6",
);
const V7_CTX: &str = concat!(
    "d55f684f81f4426e9fde92a5ff02df2ac896af63962888a97910c1379e20b0a3",
    "b1db613fb7fe2e07004329ea5c22bfd33e3dbe4cf58cc608c2c26c19a2e2fe22",
    "f98732c2b5cb844cc6c0702d91e1d50fc4382a7eba5635cd602432a2306ac4ce",
    "82f8d70c8d9bc15f918fe71e74c622d5cf71178bf6e0b9cc9f2b41dd8dbe441c",
    "41cd0c73a6dc47a348f6702f9d0e9b1b1431e948e299b9ec2272ab2c5f0c7be8",
    "6affa5dec87a0bee81d3d50007edaa2bcfccb35605155ff36ed8edd4a40dcd4b",
    "243acd11b2b987bdbfaf91a7cac27e9c5aea525ee53de7b2d3332c8644402b82",
    "3e94a7db26276d2d23aa07180f76b4fd29b9c0823099c9d62c519880aee7e969",
    "7617c1497d47bf3e571950311421b6b734d38b0db91eb85331b91ea9f61530f5",
    "4512a5a52a4bad589eb69781d537f23297bb459bdad2948a29e1550bf4787e0b",
    "e95bb173cf5fab17dab7a13a052a63453d97ccec1a321954886b7a1299faaeec",
    "ae35c6eaaca753b041b5e5f093bf83397fd21dd6b3012066fcc058cc32c3b09d",
    "7562dee29509b5839392c9ff05f51f3166aaac4ac5f238038a3045e6f72e48ef",
    "0fe8bc675e82c318a268e43970271bf119b81bf6a982746554f84e72b9f00280",
    "a320a08142923c23c883423ff949827f29bbacdc1ccdb04938ce6098c95ba6b3",
    "2528f4ef78eed778b2e122ddfd1cbdd11d1c0a6783e011fc536d63d053260637",
);
const V8_CTX: &str = concat!(
    "72efc1ebfe1ee25975a6eb3aa8589dda2b261f1c85bdab442a9e5b2dd1d7c395",
    "7a16fc08e526d4b1223f1b1232a11af274c3d70dac57f83e0983c498f1a6f1ae",
    "cb021c3e70085a1e527f1ce41ee5911a82020161529cd82773762daf5459de94",
    "a0a82adae7e1703c808543c29ed6fb32d9e004327c1355180c995a07741493a0",
    "9c21ba01a387882da4f62534b87bb15d60d197201c0fd3bf30c1500a3ecfecdd",
    "66d8721f90bcc4c17ee925c61b0a03727a9c0d5f5ca462fbfa0af1c2513a9d9d",
    "4b5345bd27a5f6e653f751693e6b6a2b8ead57d511e00e58c45b7b8d005af792",
    "88f5c7c22fd4f1bf7a898b03a5634c6a1ae3f9fae5de4f296a2896b23e7ed43e",
    "d14fa5a2803f4d28f0d3ffcf24757677aebdb47bb388378708948a8d4126ed18",
    "39e0da29a537a8c198b3c66ab00712dd261674bf45a73d67f76914f830ca014b",
    "65596f27e4cf62de66125a5566df9975155628b400fbfb3a29040ed50faffdbb",
    "18aece7c5c44693260aab386c0a37b11b114f1c415aebb653be468179428d43a",
    "4d8bc3ec38813eca30a13cf1bb18d524f1992d44d8b1a42ea30b22e6c95b199d",
    "8d182f8840b09d059585c31ad691fa0619ff038aca2c39a943421157361717c4",
    "9d322028a74648113bd8c9d7ec77cf3c89c1ec8718ceff8516d96b34c3c614f1",
    "0699c9abc4ed0411506223bea16af35c883accdbe1104eef0cfdb54e12fb230a",
);
const V9_CTX: &str = concat!(
    "3260ae8dad1f4a32c5cafe3ab0eb95549d461a67ceb9e5aa2d3afb62dece0553",
    "193ba50c75be251e08d1d08f1088576c7efdfaaf3f459559571e12511753b07a",
    "f073f35da06af0ce0bbf6b8f5ccc5cea500ec1b211bd51f63b606bf6528796ca",
    "12173ba39b8935ee44ccce646f90a45bf9ccc567f0ace13dc2d53ebeedc81f58",
    "b2e41179dddf0d5a5c42f5d8506c1a5d2f8f59f3ea873cbcd0eec19acbf32542",
    "3bd3dcb8c2b1bf1d1eaed0eba7f0698e4314fbeb2f1566d1b9253008cbccf45a",
    "2b0d9c5c9c21474f4076e02be26050b99dee4fd68a4cf890e496e4fcae7b70f9",
    "4ea5a9062da0daeba1993d2ccd1dd3c244b8428801495a58b216547e7e847c46",
    "d1d756377b6242d2e5fb83bf752b54e0df71e889f3a2bb0f4c10805bf3c59037",
    "6e3c24e22ff57f7fa965577375325cea5d920db94b9c336b455f6e894c01866f",
    "e9fbb8c8d3f70a2957285f6dfb5dcd8cbf54782f8fe7766d4723819913ac7734",
    "21e3a31095866bad22c86a6036b2518b2059b4229d18c8c2ccbdf906c6cc6e82",
    "464ee57bddb0bebcb1dc645325bfb3e665ef7251082c88ebb1cf203bd779fdd3",
    "8675713c8daadd17e1cabee432b09787b6ddf3304e38b731b45df5df51b78fcf",
    "b3d32466028d0ba36555e7e11ab0ee0666061d1645d962444bc47a38188930a8",
    "4b4d561395c73c087021927ca638b7afc8a8679ccb84c26555440ec7f10445cd",
);
const V10_CTX: &str = concat!(
    "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
    "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd",
    "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0",
    "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca",
    "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0",
    "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f",
    "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec",
    "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a",
    "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1",
    "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae",
    "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29",
    "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac",
    "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f",
    "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385",
    "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa",
    "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
);
const V11_CTX: &str = concat!(
    "77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11",
    "e1d0225438e093242d6db274fde801d4cae06f2092c728b2478559df58e837c2",
    "469ee4a4fa794e4bbc7f39bc026e3cb72c33b0888f25b4acf56a2a9804f1ce6d",
    "3d6e1dc6ca181d4b546179d55544aa7760c40d06741539c7e3cd9d2f6650b201",
    "3fd0eeb8c2b8e3d8d240ccae2d4c98320a7442e1c8d75a42d6e6cfa4c2eca179",
    "8d158c7aecdf82490f24bb9b38e108bcda12c3faf9a21141c3613b58367f922a",
    "aa26cd22f23d708dae699ad7cb40a8ad0b6e2784973dcb605684c08b8d6998c6",
    "9aac049921871ebb65301a4619ca80ecb485a31d744223ce8ddc2394828d6a80",
    "470c092f5ba413c3378fa6054255c6f9df4495862bbb3287681f931b687c888a",
    "bf844dfc8fc28331e579928cd12bd2390ae123cf03818d14dedde5c0c24c8ab0",
    "18bfca75ca096f2d531f3d1619e785f1ada437cab92e980558b3dce1474afb75",
    "bfedbf8ff54cb2618e0244c9ac0d3c66fb51598cd2db11f9be39791abe447c63",
    "094f7c453b7ff87cb5bb36b7c79efb0872d17058b83b15ab0866ad8a58656c5a",
    "7e20dbdf308b2461d97c0ec0024a2715055249cf3b478ddd4740de654f75ca68",
    "6e0d7345c69ed50cdc2a8b332b1f8824108ac937eb050585608ee734097fc090",
    "54fbff89eeaeea791f4a7ab1f9868294a4f9e27b42af8100cb9d59cef9645803",
);
const V12_CTX: &str = concat!(
    "e387aaa58ba483afa7e8eb469778317ecf4cf573aa9d4eac23f2cdf914e4e200",
    "a8b490e42ee646802dc6ee2b471b278195d60918ececb44bf79966f83faba049",
    "9298ebc699c0c8634715a320bb4f075d622e74c8c932004f25b41e361025b5a8",
    "7815391f6108fc4afa6a05d9303c6ba68a128a55705d415985832fdeaae6c8e1",
    "9110e84d1b1f199a2692119edc96132658f09da7c623efcec712537a3d94c0bf",
    "5d7e352ec94ae5797fdb377dc1551150721adf15bd26a8efc2fcaad56881fa9e",
    "62462c28f30ae1ceaca93c345cf243b73f542e2074a705bd2643bb9f7cc79bb6",
    "e7091ea6e232df0f9ad0d6cf502327876d82207abf2115cdacf6d5a48f6c1879",
    "a65b115f0f8b3cb3c59d15dd8c769bc014795a1837f3901b5845eb491adfefe0",
    "97b1fa30a12fc1f65ba22905031539971a10f2f36c321bb51331cdefb39e3964",
    "c7ef079994f5b69b2edd83a71ef549971ee93f44eac3938fcdd61d01fa71799d",
    "a3a8091c4c48aa9ed263ff0749df95d44fef6a0bb578ec69456aa5408ae32c7a",
    "f08ad7ba8921287e3bbee31b767be06a0e705c864a769137df28292283ea81a2",
    "480241b44d9921cdbec1bc28dc1fda114bd8e5217ac9d8ebafa720e9da4f9ace",
    "231cc949e5b96fe76ffc21063fddc83a6b8679c00d35e09576a875305bed5f36",
    "ed242c8900dd1fa965bc950dfce09b132263a1eef52dd6888c309f5a7d712826",
);
const V13_CTX: &str = concat!(
    "bf53d2dade78e822a4d949a9bc6766b01b06a8ef70d26748c6a7fc36d80ae4c5",
    "520f7c4ab0ac8544424fa405162fef5a6b7f229498063618d39f0003cb5fb8d1",
    "c86b643497da1ff945c8d3bedeca4f479702a7a735f043ddb1d6aaade3c4a0ac",
    "7ca7f3fa5279bef56f82cd7a2f38672e824814e10700300a055e1630b8f1cb0e",
    "919f5e942010a416e2bf48cb46993d3cb6a51c19bacf864785a00bc2ecff15d3",
    "50875b246ed53e68be6f55bd7e05cfc2b2ed6432198a6444b6d8c247fab941f5",
    "69768b5c429366f1d3f00f0345b96123d56204c01c63b22ce78baf116e525ed9",
    "0fdea39fa469494d3866c31e05f295ff21fea8d4e6e13d67e47ce722e9698a1c",
    "1048d68ebcde76b86fcf976eab8aa9790268b7068e017a8b9b749409514f1053",
    "027fd16c3786ea1bac5f15cb79711ee2abe82f5cf8b13ae73030ef5b9e4457e7",
    "5d1304f988d62dd6fc4b94ed38ba831da4b7634971b6cd8ec325d9c61c00f1df",
    "73627ed3745a5e8489f3a95c69639c32cd6e1d537a85f75cc844726e8a72fc00",
    "77ad22000f1d5078f6b866318c668f1ad03d5a5fced5219f2eabbd0aa5c0f460",
    "d183f04404a0d6f469558e81fab24a167905ab4c7878502ad3e38fdbe62a4155",
    "6cec37325759533ce8f25f367c87bb5578d667ae93f9e2fd99bcbc5f2fbba88c",
    "f6516139420fcff3b7361d86322c4bd84c82f335abb152c4a93411373aaa8220",
);
const V14_CTX: &str = concat!(
    "64497e5a831e4a932c09be3e5393376daa599548b816031d224bbf50a818ed23",
    "50eae7e96087c8a0db51ad290bd00c1ac1620857635bf246c176ab463be30b80",
    "8da548081ac847b158e1264be25bb0910bbc92647108089415d45fab1b3d2604",
    "e8a8eff1ae4020cfa39936b66827b23f371b92200be90251e6d73c5f86de5fd4",
    "a950781933d79a28272b782a2ec313efdfcc0628f43d744c2dc2ff3dcb66999b",
    "50c7ca895b0c64791eeaa5f29499fb1c026f84ce5b5c72ba1083cddb5ce45434",
    "631665c333b60b11593fb253c5179a2c8db813782a004856a1653011e93fb6d8",
    "76c18366dd8683f53412c0c180f9c848592d593f8609ca736317d356e13e2bff",
    "3a9f59cd9aeb19cd482593d8c46128bb32423b37a9adfb482b99453fbe25a41b",
    "f6feb4aa0bef5ed24bf73c762978025482c13115e4015aac992e5613a3b5c2f6",
    "85b84795cb6e9b2656d8c88157e52c42f978d8634c43d06fea928f2822e465aa",
    "6576e9bf419384506cc3ce3c54ac1a6f67dc66f3b30191e698380bc999b05abc",
    "e19dc0c6dcc2dd001ec535ba18deb2df1a101023108318c75dc98611a09dc48a",
    "0acdec676fabdf222f07e026f059b672b56e5cbc8e1d21bbd867dd9272120546",
    "81d70ea737134cdfce93b6f82ae22423274e58a0821cc5502e2d0ab4585e94de",
    "6975be5e0b4efce51cd3e70c25a1fbbbd609d273ad5b0d59631c531f6a0a57b9",
);
const V7_PTX: &str = concat!(
    "8e41b78c390b5af9d758bb214a67e9f6bf7727b09ac6124084c37611398fa45d",
    "aad94868600ed391fb1acd4857a95b466e62ef9f4b377244d1c152e7b30d731a",
    "ad30c716d214b707aed99eb5b5e580b3e887cf7497465651d4b60e6042051da3",
    "693c3b78c14489543be8b6ad0ba629565bba202313ba7b0d0c94a3252b676f46",
    "cc02ce0f8a7d34c0ed229129673c1f61aed579d08a9203a25aac3a77e9db6026",
    "7996db38df637356d9dcd1632e369939f2a29d89345c66e05066f1a3677aef18",
    "dea4113faeb629e46721a66d0a7e785d3e29af2594eb67dfa982affe0aac058f",
    "6e15864269b135418261fc3afb089472cf68c45dd7f231c6249ba0255e1e0338",
    "33fc4d00a3fe02132d7bc3873614b8aee34273581ea0325c81f0270affa13641",
    "d052d36f0757d484014354d02d6883ca15c24d8c3956b1bd027bcf41f151fd80",
    "23c5340e5606f37e90fdb87c86fb4fa634b3718a30bace06a66eaf8f63c4aa3b",
    "637826a87fe8cfa44282e92cb1615af3a28e53bc74c7cba1a0977be9065d0c1a",
    "5dec6c54ae38d37f37aa35283e048e5530a85c4e7a29d7b92ec0c3169cdf2a80",
    "5c7604bce60049b9fb7b8eaac10f51ae23794ceba68bb58112e293b9b692ca72",
    "1b37c662f8574ed4dba6f88e170881c82cddc1034a0ca7e284bf0962b6b26292",
    "d836fa9f73c1ac770eef0f2d3a1eaf61d3e03555fd424eedd67e18a18094f888",
);

fn pattern512() -> Vec<u8> {
    (0..512).map(|i| i as u8).collect()
}

/// (vector, key1, key2, sequence number, plaintext, ciphertext).
type Kat = (u32, Vec<u8>, Vec<u8>, u128, Vec<u8>, Vec<u8>);

fn vectors_128() -> Vec<Kat> {
    let (k1, k2) = (unhex(K128_1), unhex(K128_2));
    let v = |n, seq, ptx: Vec<u8>, ctx: &str| (n, k1.clone(), k2.clone(), seq, ptx, unhex(ctx));
    vec![
        (1, vec![0; 16], vec![0; 16], 0, vec![0; 32], unhex(V1_CTX)),
        (
            2,
            vec![0x11; 16],
            vec![0x22; 16],
            0x33_3333_3333,
            vec![0x44; 32],
            unhex(V2_CTX),
        ),
        (
            3,
            unhex("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0"),
            vec![0x22; 16],
            0x33_3333_3333,
            vec![0x44; 32],
            unhex(V3_CTX),
        ),
        v(4, 0, pattern512(), V4_CTX),
        v(5, 1, unhex(V4_CTX), V5_CTX),
        v(6, 2, unhex(V5_CTX), V6_CTX),
        v(7, 0xfd, unhex(V7_PTX), V7_CTX),
        v(8, 0xfe, unhex(V7_CTX), V8_CTX),
        v(9, 0xff, unhex(V8_CTX), V9_CTX),
    ]
}

fn vectors_256() -> Vec<Kat> {
    let (k1, k2) = (unhex(K256_1), unhex(K256_2));
    [
        (10, 0xffu128, V10_CTX),
        (11, 0xffff, V11_CTX),
        (12, 0xff_ffff, V12_CTX),
        (13, 0xffff_ffff, V13_CTX),
        (14, 0xff_ffff_ffff, V14_CTX),
    ]
    .into_iter()
    .map(|(n, seq, ctx)| (n, k1.clone(), k2.clone(), seq, pattern512(), unhex(ctx)))
    .collect()
}

fn check_kat((n, k1, k2, seq, ptx, ctx): Kat) {
    let x = XtsCipher::new(&k1, &k2).unwrap();
    let len = ptx.len();
    let mut buf = ptx.clone();
    x.encrypt_units(&mut buf, len, seq);
    assert_eq!(hex(&buf), hex(&ctx), "vector {n}: encryption");
    x.decrypt_units(&mut buf, len, seq);
    assert_eq!(buf, ptx, "vector {n}: decryption");
    let mut out = vec![0; len];
    x.crypt_units_to(Direction::Encrypt, &ptx, &mut out, len, seq);
    assert_eq!(out, ctx, "vector {n}: out-of-place encryption");
    x.crypt_units_to(Direction::Decrypt, &ctx, &mut out, len, seq);
    assert_eq!(out, ptx, "vector {n}: out-of-place decryption");
}

#[test]
fn ieee1619_xts_aes_128_vectors_1_to_9() {
    for v in vectors_128() {
        check_kat(v);
    }
}

#[test]
fn ieee1619_xts_aes_256_vectors_10_to_14() {
    for v in vectors_256() {
        check_kat(v);
    }
}

/// The reference: `xts-mode` over `aes`, one block at a time.
fn reference(key: &[u8], key2: &[u8], dir: Direction, data: &mut [u8], unit: usize, first: u128) {
    match key.len() {
        16 => {
            let x = Xts128::new(
                Aes128::new(key.try_into().unwrap()),
                Aes128::new(key2.try_into().unwrap()),
            );
            match dir {
                Direction::Encrypt => x.encrypt_area(data, unit, first, get_tweak_default),
                Direction::Decrypt => x.decrypt_area(data, unit, first, get_tweak_default),
            }
        }
        _ => {
            let x = Xts128::new(
                Aes256::new(key.try_into().unwrap()),
                Aes256::new(key2.try_into().unwrap()),
            );
            match dir {
                Direction::Encrypt => x.encrypt_area(data, unit, first, get_tweak_default),
                Direction::Decrypt => x.decrypt_area(data, unit, first, get_tweak_default),
            }
        }
    }
}

#[test]
fn equals_xts_mode_on_random_data_sector_sizes_and_lbas() {
    let seed = 0x5eed_c0de_1234_5678u64;
    println!("seed {seed:#x}");
    let mut rng = Rng(seed);
    for round in 0..300 {
        let klen = if rng.next().is_multiple_of(2) { 16 } else { 32 };
        let key = rng.bytes(klen);
        let key2 = rng.bytes(klen);
        let unit = if rng.next().is_multiple_of(2) {
            512
        } else {
            4096
        };
        let units = 1 + (rng.next() % 40) as usize;
        let lba = match round % 3 {
            0 => rng.next() % 1_000_000,
            1 => rng.next(),
            _ => u64::MAX - (rng.next() % 1000),
        } as u128;
        let data = rng.bytes(unit * units);
        let x = XtsCipher::new(&key, &key2).unwrap();
        for dir in [Direction::Encrypt, Direction::Decrypt] {
            let mut want = data.clone();
            reference(&key, &key2, dir, &mut want, unit, lba);
            let mut got = data.clone();
            match dir {
                Direction::Encrypt => x.encrypt_units(&mut got, unit, lba),
                Direction::Decrypt => x.decrypt_units(&mut got, unit, lba),
            }
            assert!(
                got == want,
                "seed {seed:#x} round {round}: {dir:?} of {units} x {unit} B at LBA {lba}, \
                 AES-{} differs from xts-mode",
                klen * 8
            );
        }
    }
}

#[test]
#[should_panic(expected = "whole 16-byte blocks")]
fn data_units_must_be_whole_aes_blocks() {
    let x = XtsCipher::new(&[1; 16], &[2; 16]).unwrap();
    x.encrypt_units(&mut [0; 40], 20, 0);
}

// ---------------------------------------------------------------------------
// Named keys.
// ---------------------------------------------------------------------------

const HEX_A128: &str = "000102030405060708090a0b0c0d0e0f";
const HEX_B128: &str = "f0e0d0c0b0a090807060504030201000";

fn invalid_what(e: &BdevError) -> &str {
    match e {
        BdevError::Invalid { what, .. } => what,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn keys_are_created_listed_refused_and_destroyed() {
    crypto::key_create("k_api", "AES_XTS", HEX_A128, HEX_B128, None).unwrap();
    let got = crypto::keys_get(Some("k_api"));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["name"], "k_api");
    assert_eq!(got[0]["cipher"], "AES_XTS");
    assert_eq!(got[0]["key"], HEX_A128);
    assert_eq!(got[0]["key2"], HEX_B128);
    assert_eq!(got[0]["tweak_mode"], "SIMPLE_LBA");
    assert!(crypto::keys_get(None).iter().any(|k| k["name"] == "k_api"));
    assert!(crypto::keys_get(Some("k_none")).is_empty());
    let cfg = crypto::keys_config_json();
    assert!(
        cfg.iter()
            .any(|c| c["method"] == "accel_crypto_key_create" && c["params"]["name"] == "k_api")
    );

    // Every refusal names the parameter and never shows key material.
    let secret = "00112233445566778899aabbccddeeff";
    let cases: Vec<(&str, Result<(), BdevError>)> = vec![
        (
            "key2",
            crypto::key_create("k_bad", "AES_XTS", secret, secret, None),
        ),
        (
            "key2",
            crypto::key_create("k_bad", "AES_XTS", &secret.to_uppercase(), secret, None),
        ),
        (
            "key",
            crypto::key_create("k_bad", "AES_XTS", &secret[..30], HEX_B128, None),
        ),
        (
            "key",
            crypto::key_create(
                "k_bad",
                "AES_XTS",
                &format!("{}zz", &secret[..30]),
                HEX_B128,
                None,
            ),
        ),
        (
            "key2",
            crypto::key_create(
                "k_bad",
                "AES_XTS",
                secret,
                &format!("{HEX_B128}{HEX_B128}"),
                None,
            ),
        ),
        (
            "key2",
            crypto::key_create("k_bad", "AES_XTS", secret, "", None),
        ),
        (
            "key",
            crypto::key_create("k_bad", "AES_XTS", &format!("{secret}0011"), HEX_B128, None),
        ),
        (
            "cipher",
            crypto::key_create("k_bad", "AES_CBC", secret, HEX_B128, None),
        ),
        (
            "tweak_mode",
            crypto::key_create("k_bad", "AES_XTS", secret, HEX_B128, Some("LBA_SIDEWAYS")),
        ),
        (
            "name",
            crypto::key_create("k_api", "AES_XTS", secret, HEX_B128, None),
        ),
        (
            "name",
            crypto::key_create("", "AES_XTS", secret, HEX_B128, None),
        ),
    ];
    for (what, r) in cases {
        let e = r.unwrap_err();
        assert_eq!(invalid_what(&e), what, "{e}");
        let msg = format!("{e} {e:?}");
        assert!(
            !msg.contains(&secret[..16]) && !msg.to_lowercase().contains("00112233"),
            "key material in an error: {msg}"
        );
    }
    let e = crypto::key_create("k_bad", "AES_XTS", secret, secret, None).unwrap_err();
    assert!(e.to_string().contains("different"), "{e}");
    assert!(crypto::keys_get(Some("k_bad")).is_empty());

    // The other SPDK tweak modes and 256-bit keys.
    for (i, mode) in [
        "SIMPLE_LBA",
        "JOIN_NEG_LBA_WITH_LBA",
        "INCR_512_FULL_LBA",
        "INCR_512_UPPER_LBA",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("k_mode{i}");
        crypto::key_create(&name, "AES_XTS", K256_1, K256_2, Some(mode)).unwrap();
        assert_eq!(crypto::keys_get(Some(&name))[0]["tweak_mode"], mode);
        crypto::key_destroy(&name).unwrap();
    }

    // Destroy: refused while a bdev uses the key, then allowed.
    malloc::create("m_keyuse", 64, 512, None).unwrap();
    crypto::create("m_keyuse", "c_keyuse", "k_api").unwrap();
    let e = crypto::key_destroy("k_api").unwrap_err();
    assert!(
        matches!(&e, BdevError::Busy { bdev, .. } if bdev == "c_keyuse"),
        "{e:?}"
    );
    assert!(e.to_string().contains("k_api"), "{e}");
    assert_eq!(
        invalid_what(&crypto::create("m_keyuse", "c_keyuse2", "k_missing").unwrap_err()),
        "key_name"
    );
    on(0, || async {
        crypto::delete("c_keyuse").await.unwrap();
        malloc::delete("m_keyuse").await.unwrap();
    });
    crypto::key_destroy("k_api").unwrap();
    assert_eq!(
        invalid_what(&crypto::key_destroy("k_api").unwrap_err()),
        "key_name"
    );
    assert!(crypto::keys_get(Some("k_api")).is_empty());
}

#[test]
fn key_debug_output_is_redacted() {
    crypto::key_create("k_dbg", "AES_XTS", HEX_A128, HEX_B128, None).unwrap();
    malloc::create("m_dbg", 16, 512, None).unwrap();
    let b = crypto::create("m_dbg", "c_dbg", "k_dbg").unwrap();
    let x = XtsCipher::new(&unhex(HEX_A128), &unhex(HEX_B128)).unwrap();
    for s in [
        format!("{x:?}"),
        format!("{b:?}"),
        b.dump_info_json().to_string(),
    ] {
        assert!(
            !s.contains("0102030405") && !s.contains("f0e0d0c0"),
            "key material shown: {s}"
        );
    }
    on(0, || async {
        crypto::delete("c_dbg").await.unwrap();
        malloc::delete("m_dbg").await.unwrap();
    });
    crypto::key_destroy("k_dbg").unwrap();
}

// ---------------------------------------------------------------------------
// The bdev.
// ---------------------------------------------------------------------------

fn dma(data: &[u8], extra: usize) -> DmaBuf {
    let mut b = bdev::memory().alloc(data.len() + extra, 4096).unwrap();
    b.fill(0xee);
    b.write_at(0, data);
    b
}

fn read_all(b: &DmaBuf, off: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    b.read_at(off, &mut v);
    v
}

/// Submits over caller segments and waits for the status.
async fn io_iovs(ch: &bdev::BdevChannel, ty: IoType, lba: u64, n: u64, iov: &[IoVec]) -> IoStatus {
    use std::cell::Cell;
    use std::rc::Rc;
    fn cb(io: &mut BdevIo, st: IoStatus) {
        // SAFETY: `ctx` is the `Rc` leaked below, rebuilt once.
        let slot = unsafe { Rc::from_raw(io.ctx() as *const Cell<Option<IoStatus>>) };
        slot.set(Some(st));
    }
    let slot = Rc::new(Cell::new(None));
    let ctx = Rc::into_raw(slot.clone()) as usize;
    // SAFETY: the caller's buffers outlive the wait below.
    unsafe { ch.submit_iovs(ty, lba, n, iov, false, cb, ctx).unwrap() };
    loop {
        if let Some(st) = slot.get() {
            return st;
        }
        reactor::yield_now().await;
    }
}

async fn read_blocks(ch: &bdev::BdevChannel, lba: u64, n: u64, bs: usize) -> Vec<u8> {
    let len = n as usize * bs;
    let (st, b) = ch
        .io(
            IoType::Read,
            Some(bdev::memory().alloc(len, 4096).unwrap()),
            lba,
            n,
            false,
        )
        .await
        .unwrap();
    assert_eq!(st, IoStatus::Success, "read {n} blocks at {lba}");
    read_all(&b.unwrap(), 0, len)
}

/// Writes through the crypto bdev from cut segments, reads back, checks
/// what lies in the base against the cipher, and every other I/O type.
/// Directly over malloc the crypto bdev uses malloc's zero-copy windows;
/// with `via_passthru` (malloc → passthru → crypto) it writes through its
/// DMA buffers and decrypts in place.
fn round_trip(bs: usize, key: &str, key2: &str, seed: u64, via_passthru: bool) {
    let tag = format!("{bs}_{}_{}", key.len() * 4, via_passthru as u8);
    let (kname, mname, cname) = (
        format!("k_rt{tag}"),
        format!("m_rt{tag}"),
        format!("c_rt{tag}"),
    );
    crypto::key_create(&kname, "AES_XTS", key, key2, None).unwrap();
    let blocks = (4 << 20) / bs as u64;
    malloc::create(&mname, blocks, bs as u32, None).unwrap();
    let pname = format!("p_rt{tag}");
    let base = if via_passthru {
        passthru::create(&mname, &pname, None).unwrap();
        pname.as_str()
    } else {
        mname.as_str()
    };
    assert_eq!(
        bdev::get(base).unwrap().io_type_supported(IoType::Zcopy),
        !via_passthru
    );
    let b = crypto::create(base, &cname, &kname).unwrap();
    assert!(!b.io_type_supported(IoType::Zcopy));
    assert_eq!((b.block_size() as usize, b.num_blocks()), (bs, blocks));
    assert_eq!(b.module(), "crypto");
    for ty in [
        IoType::Read,
        IoType::Write,
        IoType::Flush,
        IoType::Unmap,
        IoType::WriteZeroes,
        IoType::Reset,
    ] {
        assert!(b.io_type_supported(ty), "{ty:?}");
    }
    assert!(!b.io_type_supported(IoType::Compare));
    let info = b.dump_info_json();
    assert_eq!(info["crypto"]["base_bdev_name"], base);
    assert_eq!(info["crypto"]["key_name"], kname.as_str());
    let cfg = b.write_config_json().unwrap();
    assert_eq!(cfg["method"], "bdev_crypto_create");
    assert_eq!(cfg["params"]["key_name"], kname.as_str());
    assert_eq!(
        bdev::get(base).unwrap().claimed_by().as_deref(),
        Some("crypto")
    );
    let x = XtsCipher::new(&unhex(key), &unhex(key2)).unwrap();
    let (c2, m2) = (cname.clone(), mname.clone());
    on(0, move || async move {
        let mut rng = Rng(seed);
        let desc = bdev::open(&c2, true, nop).unwrap();
        let ch = desc.get_io_channel().unwrap();
        let raw_desc = bdev::open(&m2, false, nop).unwrap();
        let raw = raw_desc.get_io_channel().unwrap();
        // Never-written blocks of the (zeroed) malloc disk read as the
        // decryption of zeroes.
        let mut expected = vec![0u8; blocks as usize * bs];
        x.decrypt_units(&mut expected, bs, 0);
        for i in 0..40 {
            // Up to 300 KiB (more than one 128 KiB chunk), from up to four
            // segments cut at odd bytes (inside AES blocks and blocks).
            let n = if i % 8 == 0 {
                (300 << 10) / bs as u64
            } else {
                1 + rng.next() % 24
            };
            let lba = rng.next() % (blocks - n);
            let len = n as usize * bs;
            let data = rng.bytes(len);
            let buf = dma(&data, 64);
            let mut cuts = vec![0, len];
            for _ in 0..(i % 4) {
                cuts.push(1 + (rng.next() as usize) % (len - 1));
            }
            cuts.sort_unstable();
            cuts.dedup();
            let iov: Vec<IoVec> = cuts
                .windows(2)
                .map(|w| IoVec::of(&buf, w[0], w[1] - w[0]))
                .collect();
            let st = io_iovs(&ch, IoType::Write, lba, n, &iov).await;
            assert_eq!(st, IoStatus::Success, "write {i}: {n} blocks at {lba}");
            assert_eq!(
                read_all(&buf, 0, len),
                data,
                "write {i}: the caller's buffer was modified"
            );
            expected[lba as usize * bs..][..len].copy_from_slice(&data);
            // Read back into other cut segments.
            let rb = dma(&vec![0; len], 64);
            let riov: Vec<IoVec> = cuts
                .windows(2)
                .map(|w| IoVec::of(&rb, w[0] + 3, w[1] - w[0]))
                .collect();
            let st = io_iovs(&ch, IoType::Read, lba, n, &riov).await;
            assert_eq!(st, IoStatus::Success);
            assert!(read_all(&rb, 3, len) == data, "read {i} differs");
            // At rest: the ciphertext of each block under its LBA.
            let mut want = data.clone();
            x.encrypt_units(&mut want, bs, lba as u128);
            let at_rest = read_blocks(&raw, lba, n, bs).await;
            assert!(at_rest != data, "write {i}: plaintext at rest");
            assert!(at_rest == want, "write {i}: not XTS(LBA) at rest");
        }
        // A write with FUA (the DMA-buffer path even over a zero-copy
        // base): read back, ciphertext at rest.
        let (fl, fnb) = (blocks - 9, 9);
        let fdata = rng.bytes(fnb as usize * bs);
        let (st, _) = ch
            .io(IoType::Write, Some(dma(&fdata, 0)), fl, fnb, true)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        expected[fl as usize * bs..][..fdata.len()].copy_from_slice(&fdata);
        assert!(read_blocks(&ch, fl, fnb, bs).await == fdata, "FUA write");
        let mut want = fdata.clone();
        x.encrypt_units(&mut want, bs, fl as u128);
        assert!(read_blocks(&raw, fl, fnb, bs).await == want, "FUA at rest");
        // Write zeroes (more than a DMA chunk and a zero-copy window):
        // zeroes read back, ciphertext at rest.
        let (zl, zn) = (7, (1200 << 10) / bs as u64 + 3);
        let (st, _) = ch
            .io(IoType::WriteZeroes, None, zl, zn, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        expected[zl as usize * bs..][..zn as usize * bs].fill(0);
        let got = read_blocks(&ch, zl, zn, bs).await;
        assert!(got.iter().all(|&b| b == 0), "write zeroes read back");
        let at_rest = read_blocks(&raw, zl, zn, bs).await;
        let mut want = vec![0u8; zn as usize * bs];
        x.encrypt_units(&mut want, bs, zl as u128);
        assert!(at_rest == want, "encrypted zeroes at rest");
        // Pass-through types.
        for ty in [IoType::Flush, IoType::Reset] {
            let (st, _) = ch.io(ty, None, 0, blocks, false).await.unwrap();
            assert_eq!(st, IoStatus::Success, "{ty:?}");
        }
        let (st, _) = ch
            .io(IoType::Compare, Some(dma(&vec![0; bs], 0)), 0, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::NotSupported);
        // Unmap reaches the base (malloc zeroes it): the block then reads
        // as the decryption of zeroes, not as zeroes.
        let (st, _) = ch.io(IoType::Unmap, None, 3, 1, false).await.unwrap();
        assert_eq!(st, IoStatus::Success);
        assert!(read_blocks(&raw, 3, 1, bs).await.iter().all(|&b| b == 0));
        let mut undefined = vec![0u8; bs];
        x.decrypt_units(&mut undefined, bs, 3);
        assert_eq!(read_blocks(&ch, 3, 1, bs).await, undefined);
        expected[3 * bs..4 * bs].copy_from_slice(&undefined);
        // Everything, 1 MiB at a time.
        let step = (1 << 20) / bs as u64;
        let mut lba = 0;
        while lba < blocks {
            let n = step.min(blocks - lba);
            let got = read_blocks(&ch, lba, n, bs).await;
            assert!(
                got == expected[lba as usize * bs..][..n as usize * bs],
                "final read at {lba}"
            );
            lba += n;
        }
        drop((ch, raw));
        drop((desc, raw_desc));
    });
    let st = b.stats();
    assert!(st.of(IoType::Write).ops >= 40 && st.of(IoType::Read).ops > 40);
    on(0, move || async move {
        crypto::delete(&cname).await.unwrap();
        if via_passthru {
            passthru::delete(&pname).await.unwrap();
        }
        assert!(bdev::get(&mname).unwrap().claimed_by().is_none());
        malloc::delete(&mname).await.unwrap();
    });
    crypto::key_destroy(&kname).unwrap();
}

#[test]
fn round_trip_over_malloc_512_aes128() {
    round_trip(512, HEX_A128, HEX_B128, 11, false);
}

#[test]
fn round_trip_over_passthru_512_aes128() {
    round_trip(512, HEX_A128, HEX_B128, 12, true);
}

#[test]
fn round_trip_over_malloc_4096_aes256() {
    round_trip(4096, K256_1, K256_2, 13, false);
}

#[test]
fn round_trip_over_passthru_4096_aes256() {
    round_trip(4096, K256_1, K256_2, 14, true);
}

/// Both cores write and read their own halves at once, many I/Os in
/// flight each.
#[test]
fn io_from_both_cores_at_queue_depth() {
    crypto::key_create("k_cores", "AES_XTS", K256_1, K256_2, None).unwrap();
    malloc::create("m_cores_c", 2 * 4096, 4096, None).unwrap();
    crypto::create("m_cores_c", "c_cores", "k_cores").unwrap();
    let done: Vec<_> = [0u32, 1]
        .into_iter()
        .map(|core| {
            std::thread::spawn(move || {
                on(core, move || async move {
                    use std::cell::Cell;
                    thread_local!(static N: Cell<u32> = const { Cell::new(0) });
                    fn cb(io: &mut BdevIo, st: IoStatus) {
                        assert_eq!(st, IoStatus::Success, "at {}", io.offset_blocks());
                        N.with(|n| n.set(n.get() + 1));
                    }
                    let desc = bdev::open("c_cores", true, nop).unwrap();
                    let ch = desc.get_io_channel().unwrap();
                    let base = core as u64 * 4096;
                    for i in 0..128u64 {
                        let data = vec![(i as u8) ^ (core as u8 * 0x80); 8 * 4096];
                        ch.write(dma(&data, 0), base + i * 32, 8, false, cb, 0)
                            .unwrap();
                    }
                    while N.with(|n| n.get()) < 128 {
                        reactor::yield_now().await;
                    }
                    for i in 0..128u64 {
                        let got = read_blocks(&ch, base + i * 32, 8, 4096).await;
                        assert!(got.iter().all(|&b| b == (i as u8) ^ (core as u8 * 0x80)));
                    }
                    drop(ch);
                    drop(desc);
                })
            })
        })
        .collect();
    for t in done {
        t.join().unwrap();
    }
    on(0, || async {
        crypto::delete("c_cores").await.unwrap();
        malloc::delete("m_cores_c").await.unwrap();
    });
    crypto::key_destroy("k_cores").unwrap();
}

/// The other SPDK tweak modes against `xts-mode` with the same tweaks.
#[test]
fn tweak_modes_match_their_definition() {
    use bdev::modules::crypto::TweakMode;
    let (k1, k2) = (unhex(K128_1), unhex(K128_2));
    let xm = Xts128::new(
        Aes128::new(k1.as_slice().try_into().unwrap()),
        Aes128::new(k2.as_slice().try_into().unwrap()),
    );
    for (i, mode) in [
        TweakMode::SimpleLba,
        TweakMode::JoinNegLbaWithLba,
        TweakMode::Incr512FullLba,
        TweakMode::Incr512UpperLba,
    ]
    .into_iter()
    .enumerate()
    {
        for bs in [512usize, 4096] {
            let (k, m, c) = (
                format!("k_tw{i}_{bs}"),
                format!("m_tw{i}_{bs}"),
                format!("c_tw{i}_{bs}"),
            );
            crypto::key_create(&k, "AES_XTS", K128_1, K128_2, Some(mode.name())).unwrap();
            malloc::create(&m, 64, bs as u32, None).unwrap();
            crypto::create(&m, &c, &k).unwrap();
            let mut rng = Rng(7 + i as u64);
            let data = rng.bytes(5 * bs);
            let (c2, m2, d2) = (c.clone(), m.clone(), data.clone());
            let at_rest = on(0, move || async move {
                let desc = bdev::open(&c2, true, nop).unwrap();
                let ch = desc.get_io_channel().unwrap();
                let (st, _) = ch
                    .io(IoType::Write, Some(dma(&d2, 0)), 9, 5, false)
                    .await
                    .unwrap();
                assert_eq!(st, IoStatus::Success);
                assert_eq!(read_blocks(&ch, 9, 5, bs).await, d2);
                let rd = bdev::open(&m2, false, nop).unwrap();
                let raw = rd.get_io_channel().unwrap();
                let v = read_blocks(&raw, 9, 5, bs).await;
                drop((ch, raw));
                drop((desc, rd));
                v
            });
            let mut want = data.clone();
            let per = (bs / 512) as u128;
            match mode {
                TweakMode::SimpleLba => xm.encrypt_area(&mut want, bs, 9, get_tweak_default),
                TweakMode::JoinNegLbaWithLba => xm.encrypt_area(&mut want, bs, 9, |lba| {
                    let l = lba as u64;
                    let t = ((!l & (u64::MAX >> 1)) as u128) << 64 | l as u128;
                    Array(t.to_le_bytes())
                }),
                TweakMode::Incr512FullLba => {
                    xm.encrypt_area(&mut want, 512, 9 * per, get_tweak_default)
                }
                TweakMode::Incr512UpperLba => {
                    xm.encrypt_area(&mut want, 512, 9 * per, |n| Array((n << 64).to_le_bytes()))
                }
            }
            assert!(at_rest == want, "{} with {bs}-byte blocks", mode.name());
            on(0, move || async move {
                crypto::delete(&c).await.unwrap();
                malloc::delete(&m).await.unwrap();
            });
            crypto::key_destroy(&k).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// Interoperability: the volume at rest, decrypted by OpenSSL.
// ---------------------------------------------------------------------------

fn openssl() -> &'static str {
    match Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => "openssl",
        _ => panic!(
            "the interoperability test needs the `openssl` command on PATH \
             (Debian: apt-get install openssl)"
        ),
    }
}

/// `openssl enc -aes-<bits>-ecb -nopad` over `data`, encrypting or
/// decrypting with `key`.
fn openssl_ecb(key: &[u8], decrypt: bool, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(openssl())
        .args([
            "enc",
            &format!("-aes-{}-ecb", key.len() * 8),
            if decrypt { "-d" } else { "-e" },
            "-nopad",
            "-K",
            &hex(key),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "openssl enc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Multiplication by alpha (IEEE 1619 5.2), written here independently of
/// the module.
fn times_alpha(t: &mut [u8; 16]) {
    let carry = t[15] >> 7;
    for i in (1..16).rev() {
        t[i] = (t[i] << 1) | (t[i - 1] >> 7);
    }
    t[0] = (t[0] << 1) ^ (0x87 * carry);
}

/// Decrypts `ct` (whole blocks of `bs` bytes from `first_lba`) with
/// OpenSSL: `openssl enc` refuses XTS ciphers ("enc XTS ciphers not
/// supported"), so XTS is put together here from OpenSSL's AES (ECB, one
/// call for every block's tweak, one for all the data):
/// `P_j = D_K1(C_j ^ T_j) ^ T_j`, `T_0 = E_K2(LBA as 16 LE bytes)`,
/// `T_{j+1} = T_j * alpha`.
fn openssl_xts_decrypt(key: &[u8], key2: &[u8], first_lba: u64, bs: usize, ct: &[u8]) -> Vec<u8> {
    let blocks = ct.len() / bs;
    let ivs: Vec<u8> = (0..blocks)
        .flat_map(|i| ((first_lba + i as u64) as u128).to_le_bytes())
        .collect();
    let t0 = openssl_ecb(key2, false, &ivs);
    assert_eq!(t0.len(), ivs.len());
    let mut tweaks = Vec::with_capacity(ct.len());
    for b in 0..blocks {
        let mut t: [u8; 16] = t0[16 * b..16 * b + 16].try_into().unwrap();
        for _ in 0..bs / 16 {
            tweaks.extend_from_slice(&t);
            times_alpha(&mut t);
        }
    }
    let x: Vec<u8> = ct.iter().zip(&tweaks).map(|(c, t)| c ^ t).collect();
    let d = openssl_ecb(key, true, &x);
    assert_eq!(d.len(), ct.len());
    d.iter().zip(&tweaks).map(|(p, t)| p ^ t).collect()
}

/// Python's `cryptography` (OpenSSL's EVP AES-XTS), when installed: a
/// second, whole-XTS decryption, block by block with the LBA as IV.
fn python_xts_decrypt(
    key: &[u8],
    key2: &[u8],
    first_lba: u64,
    bs: usize,
    ct: &[u8],
) -> Option<Vec<u8>> {
    use std::io::Write;
    let script = "import sys\n\
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
        k = bytes.fromhex(sys.argv[1]); lba = int(sys.argv[2]); bs = int(sys.argv[3])\n\
        ct = sys.stdin.buffer.read(); out = b''\n\
        for i in range(len(ct) // bs):\n\
        \x20   d = Cipher(algorithms.AES(k), modes.XTS((lba + i).to_bytes(16, 'little'))).decryptor()\n\
        \x20   out += d.update(ct[i * bs:(i + 1) * bs]) + d.finalize()\n\
        sys.stdout.buffer.write(out)\n";
    let probe = Command::new("python3")
        .args(["-c", "import cryptography"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        // CI installs it (ci/install-host-deps) and requires the check.
        assert!(
            std::env::var_os("CRYPTO_REQUIRE_EVP_XTS").is_none(),
            "CRYPTO_REQUIRE_EVP_XTS is set but python3 cannot import `cryptography` \
             (pip install cryptography, or run ci/install-host-deps)"
        );
        println!("python3 with `cryptography` not found: EVP XTS cross-check skipped");
        return None;
    }
    let mut child = Command::new("python3")
        .args([
            "-c",
            script,
            &format!("{}{}", hex(key), hex(key2)),
            &first_lba.to_string(),
            &bs.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = ct.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success(), "python XTS decryption failed");
    Some(out.stdout)
}

#[test]
fn volume_decrypts_with_openssl() {
    assert!(
        Command::new(openssl())
            .arg("version")
            .output()
            .unwrap()
            .status
            .success()
    );
    for (i, (bs, key, key2)) in [
        (512usize, K256_1, K256_2),
        (4096, K256_1, K256_2),
        (512, HEX_A128, HEX_B128),
        (4096, K128_1, K128_2),
    ]
    .into_iter()
    .enumerate()
    {
        let (k, m, c) = (
            format!("k_ossl{i}"),
            format!("m_ossl{i}"),
            format!("c_ossl{i}"),
        );
        crypto::key_create(&k, "AES_XTS", key, key2, None).unwrap();
        malloc::create(&m, 256, bs as u32, None).unwrap();
        crypto::create(&m, &c, &k).unwrap();
        let first = 100 + i as u64 * 13;
        let data = Rng(99 + i as u64).bytes(24 * bs);
        let (c2, m2, d2) = (c.clone(), m.clone(), data.clone());
        let dump = on(0, move || async move {
            let desc = bdev::open(&c2, true, nop).unwrap();
            let ch = desc.get_io_channel().unwrap();
            let (st, _) = ch
                .io(IoType::Write, Some(dma(&d2, 0)), first, 24, false)
                .await
                .unwrap();
            assert_eq!(st, IoStatus::Success);
            // The raw volume, read from the malloc bdev directly.
            let rd = bdev::open(&m2, false, nop).unwrap();
            let raw = rd.get_io_channel().unwrap();
            let v = read_blocks(&raw, first, 24, bs).await;
            drop((ch, raw));
            drop((desc, rd));
            v
        });
        assert!(dump != data);
        let (k1, k2) = (unhex(key), unhex(key2));
        let plain = openssl_xts_decrypt(&k1, &k2, first, bs, &dump);
        assert!(
            plain == data,
            "AES-{} {bs}-byte blocks: OpenSSL decrypts something else",
            k1.len() * 8
        );
        if let Some(p) = python_xts_decrypt(&k1, &k2, first, bs, &dump) {
            assert!(p == data, "EVP AES-XTS decrypts something else");
        }
        on(0, move || async move {
            crypto::delete(&c).await.unwrap();
            malloc::delete(&m).await.unwrap();
        });
        crypto::key_destroy(&k).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Events.
// ---------------------------------------------------------------------------

fn resize_follows(levels: &[&str], tag: &str) {
    let key = format!("k_rs{tag}");
    crypto::key_create(&key, "AES_XTS", HEX_A128, HEX_B128, None).unwrap();
    let null_name = format!("n_rs{tag}");
    null::create(&null_name, 1024 * 2048, 512, None, null::ReadFill::Zeroes).unwrap();
    let mut below = null_name.clone();
    let mut made = vec![];
    for l in levels {
        let name = format!("{l}_rs{tag}");
        match *l {
            "pt" => {
                passthru::create(&below, &name, None).unwrap();
            }
            _ => {
                crypto::create(&below, &name, &key).unwrap();
            }
        }
        made.push(name.clone());
        below = name;
    }
    let top = below;
    let seen: Arc<Mutex<Vec<(String, BdevEvent)>>> = Arc::default();
    let (s2, t2) = (seen.clone(), top.clone());
    let desc = on(1, move || async move {
        bdev::open(&t2, false, move |n, e| {
            s2.lock().unwrap().push((n.to_owned(), e))
        })
        .unwrap()
    });
    null::resize(&null_name, 2048).unwrap();
    wait_until("Resize at the top", || !seen.lock().unwrap().is_empty());
    let want = 2048 * 2048;
    for name in &made {
        assert_eq!(bdev::get(name).unwrap().num_blocks(), want, "{name}");
    }
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[(
            top.clone(),
            BdevEvent::Resize {
                old_blocks: 1024 * 2048,
                new_blocks: want
            }
        )]
    );
    // I/O at the new end works through every layer.
    on(1, move || async move {
        let ch = desc.get_io_channel().unwrap();
        assert!(
            read_blocks(&ch, want - 1, 1, 512).await.len() == 512,
            "read at the new end"
        );
        drop(ch);
        drop(desc);
    });
    // Removing the base removes every layer and frees the key.
    on(
        0,
        move || async move { null::delete(&null_name).await.unwrap() },
    );
    wait_until("the stack to go", || {
        made.iter().all(|n| bdev::get(n).is_none())
    });
    wait_until("the key to be free", || crypto::key_destroy(&key).is_ok());
}

#[test]
fn resize_reaches_crypto_and_its_opener() {
    resize_follows(&["c"], "1");
}

#[test]
fn resize_reaches_crypto_over_passthru() {
    resize_follows(&["pt", "c"], "2");
}

#[test]
fn create_refuses_bad_bases_and_names() {
    crypto::key_create("k_refuse", "AES_XTS", HEX_A128, HEX_B128, None).unwrap();
    assert!(matches!(
        crypto::create("nowhere", "c_refuse", "k_refuse"),
        Err(BdevError::NotFound(_))
    ));
    malloc::create("m_refuse", 16, 512, None).unwrap();
    crypto::create("m_refuse", "c_refuse", "k_refuse").unwrap();
    assert!(matches!(
        crypto::create("m_refuse", "c_refuse", "k_refuse"),
        Err(BdevError::Exists(_))
    ));
    assert!(matches!(
        crypto::create("m_refuse", "c_refuse2", "k_refuse"),
        Err(BdevError::Claimed { .. })
    ));
    // The failed creations left no user on the key.
    on(0, || async {
        crypto::delete("c_refuse").await.unwrap();
        assert!(matches!(
            crypto::delete("m_refuse").await,
            Err(BdevError::NotFound(_))
        ));
        malloc::delete("m_refuse").await.unwrap();
    });
    crypto::key_destroy("k_refuse").unwrap();
}
