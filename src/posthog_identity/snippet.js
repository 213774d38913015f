(function(w,d,o){
var ph=w.posthog=w.posthog||[];
if(!ph.__SV){
ph.__SV=1;ph._i=[];ph.people=ph.people||[];
var stub=function(t,m){var p=m.split(".");if(p.length==2){t=t[p[0]];m=p[1];}
t[m]=function(){t.push([m].concat(Array.prototype.slice.call(arguments,0)));};};
var ms=o.methods.split(" ");for(var i=0;i<ms.length;i++){stub(ph,ms[i]);}
ph.init=function(k,c,n){ph._i.push([k,c,n||"posthog"]);};
var s=d.createElement("script");s.async=true;s.crossOrigin="anonymous";s.src=o.src;
if(o.nonce){s.nonce=o.nonce;}
(d.head||d.documentElement).appendChild(s);
}
var c=o.config,id=o.identity,f=o.flags,k=o.consent;
if(c.tracing_headers===undefined){c.tracing_headers=[w.location.hostname];}
/*consent*/
if(k){
var st=k.state;
if(st==="browser"){st=consent(k);}
if(st!=="granted"){
id=null;f=null;
for(var n in k.options){c[n]=k.options[n];}
if(st!=="pending"){c.opt_out_capturing_by_default=true;}
if(k.state==="browser"?st==="denied":k.clear){wipe(k.prefixes);}
}
}
/*end consent*/
if(o.nonce){c.prepare_external_dependency_script=c.prepare_external_dependency_stylesheet=
function(e){e.nonce=o.nonce;return e;};}
if(f){c.bootstrap=c.bootstrap||{};c.bootstrap.featureFlags=f.values;
c.bootstrap.featureFlagPayloads=f.payloads;}
if(id){
c.get_device_id=function(){return id.anonymous;};
c.loaded=function(p){
var r=function(){p.reset({resetDeviceID:true,bootstrap:c.bootstrap});};
if(!id.user){if(!id.signedIn&&p.get_distinct_id()!==id.anonymous){r();}return;}
if(p.get_distinct_id()===id.user){return;}
if(p.get_property("$user_state")==="identified"){r();}
p.identify(id.user);};
}
ph.init(o.token,c);
/*consent*/
function cookie(name){
var cs=d.cookie?d.cookie.split(";"):[];
for(var i=0;i<cs.length;i++){
var e=cs[i].indexOf("="),key=(e<0?cs[i]:cs[i].slice(0,e)).trim();
if(key!==name){continue;}
var v=e<0?"":cs[i].slice(e+1).trim();
if(v.length>1&&v.charAt(0)==='"'&&v.charAt(v.length-1)==='"'){v=v.slice(1,-1);}
return v.trim().toLowerCase();}
return null;}
function consent(k){
var v=null,n=w.navigator||{};
try{v=cookie(k.cookie);}catch(e){}
if(v!==null){if(k.granted.indexOf(v)>=0){return "granted";}
if(k.denied.indexOf(v)>=0){return "denied";}}
if(k.gpc&&(n.globalPrivacyControl===true||n.globalPrivacyControl==="1")){return "denied";}
if(k.dnt&&(n.doNotTrack==="1"||w.doNotTrack==="1")){return "denied";}
return k.fallback;}
function wipe(p){
var hit=function(x){
for(var i=0;i<p.length;i++){if(x.indexOf(p[i])===0){return true;}}return false;};
var stores=["localStorage","sessionStorage"];
for(var j=0;j<stores.length;j++){try{
var s=w[stores[j]],keys=[];
for(var i=0;i<s.length;i++){keys.push(s.key(i));}
for(i=0;i<keys.length;i++){if(keys[i]!==null&&hit(keys[i])){s.removeItem(keys[i]);}}
}catch(e){}}
try{
var h=w.location.hostname.split("."),sec=w.location.protocol==="https:"?";Secure":"";
var cs=d.cookie?d.cookie.split(";"):[];
for(var m=0;m<cs.length;m++){
var name=cs[m].split("=")[0].trim();
if(!name||!hit(name)){continue;}
var gone=name+"=;Max-Age=0;Path=/"+sec;d.cookie=gone;
for(var l=0;l<h.length;l++){d.cookie=gone+";Domain=."+h.slice(l).join(".");}}
}catch(e){}}
/*end consent*/
})
